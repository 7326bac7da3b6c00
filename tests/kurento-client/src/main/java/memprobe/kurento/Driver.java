package memprobe.kurento;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.kurento.client.ErrorEvent;
import org.kurento.client.KurentoClient;
import org.kurento.client.KurentoConnectionListener;
import org.kurento.client.KurentoObject;
import org.kurento.client.ListenerSubscription;
import org.kurento.client.MediaObject;
import org.kurento.client.MediaPipeline;
import org.kurento.client.Transaction;
import org.kurento.client.WebRtcEndpoint;
import org.kurento.client.internal.server.KurentoServerException;

/**
 * The official kurento-client, driven line by line so that the Rust tests
 * (tests/harness/kurento_client.rs) can script it: one command a line on stdin, one JSON line
 * a command on stdout, `{"ok":true,...}` or `{"ok":false,"error":{...}}` with the exception
 * exactly as the client raised it. The connection's own events (reconnected, disconnected)
 * come as `{"event":...}` lines whenever they happen.
 *
 * <pre>
 * connect WS-URL            KurentoClient.create                  {"ok":true}
 * pipeline                  createMediaPipeline                   {"ok":true,"id":...}
 * endpoint PIPELINE         new WebRtcEndpoint.Builder(p).build   {"ok":true,"id":...}
 * transaction               a pipeline and an endpoint, one tx    {"ok":true,"id":...,"endpoint":...}
 * name ID                   getName                               {"ok":true,"value":...}
 * set-name ID NAME          setName                               {"ok":true}
 * children ID               getChildren                           {"ok":true,"value":[ids]}
 * subscribe ID              addErrorListener                      {"ok":true,"value":subscription}
 * by-id ID                  getById (a MediaPipeline)             {"ok":true,"id":...}
 * release ID                release                               {"ok":true}
 * destroy                   destroy                               {"ok":true}
 * </pre>
 */
public final class Driver {
  private final Map<String, KurentoObject> objects = new HashMap<>();
  private KurentoClient client;

  public static void main(String[] args) throws Exception {
    Driver driver = new Driver();
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    for (String line; (line = in.readLine()) != null; ) {
      if (line.isBlank()) {
        continue;
      }
      JsonObject answer;
      try {
        answer = driver.run(line.trim().split("\\s+"));
        answer.addProperty("ok", true);
      } catch (Exception e) {
        answer = new JsonObject();
        answer.addProperty("ok", false);
        answer.add("error", describe(e));
      }
      print(answer);
    }
    if (driver.client != null && !driver.client.isClosed()) {
      driver.client.destroy();
    }
  }

  private JsonObject run(String[] words) {
    JsonObject answer = new JsonObject();
    switch (words[0]) {
      case "connect" -> client = KurentoClient.create(arg(words, 1), new Events());
      case "pipeline" -> answer.addProperty("id", keep(client().createMediaPipeline()));
      case "endpoint" -> {
        MediaPipeline pipeline = object(words, MediaPipeline.class);
        answer.addProperty("id", keep(new WebRtcEndpoint.Builder(pipeline).build()));
      }
      case "transaction" -> {
        Transaction tx = client().beginTransaction();
        MediaPipeline pipeline = client().createMediaPipeline(tx);
        WebRtcEndpoint endpoint = new WebRtcEndpoint.Builder(pipeline).build(tx);
        tx.commit();
        answer.addProperty("id", keep(pipeline));
        answer.addProperty("endpoint", keep(endpoint));
      }
      case "name" -> answer.addProperty("value", object(words, MediaObject.class).getName());
      case "set-name" -> object(words, MediaObject.class).setName(arg(words, 2));
      case "children" -> {
        JsonArray ids = new JsonArray();
        for (MediaObject child : object(words, MediaObject.class).getChildren()) {
          ids.add(keep(child));
        }
        answer.add("value", ids);
      }
      case "subscribe" -> {
        MediaObject object = object(words, MediaObject.class);
        ListenerSubscription subscription =
            object.addErrorListener((ErrorEvent e) -> event("error", e.getDescription()));
        answer.addProperty("value", subscription.getSubscriptionId());
      }
      case "by-id" -> answer.addProperty(
          "id", keep(client().getById(arg(words, 1), MediaPipeline.class)));
      case "release" -> {
        object(words, MediaObject.class).release();
        objects.remove(words[1]);
      }
      case "destroy" -> client().destroy();
      default -> throw new IllegalArgumentException("unknown command: " + words[0]
          + " (try connect, pipeline, endpoint, transaction, name, set-name, children, "
          + "subscribe, by-id, release, destroy)");
    }
    return answer;
  }

  private KurentoClient client() {
    if (client == null) {
      throw new IllegalStateException("not connected (send: connect ws://HOST:PORT/kurento)");
    }
    return client;
  }

  private String keep(KurentoObject object) {
    objects.put(object.getId(), object);
    return object.getId();
  }

  private <T> T object(String[] words, Class<T> kind) {
    KurentoObject object = objects.get(arg(words, 1));
    if (!kind.isInstance(object)) {
      throw new IllegalArgumentException("no " + kind.getSimpleName() + " " + words[1]
          + " made here (its id comes from pipeline or endpoint)");
    }
    return kind.cast(object);
  }

  private static String arg(String[] words, int at) {
    if (words.length <= at) {
      throw new IllegalArgumentException(words[0] + " needs " + at + " argument(s)");
    }
    return words[at];
  }

  /** The exception as the application sees it, and the server's error when it came from one. */
  private static JsonObject describe(Throwable e) {
    JsonObject error = new JsonObject();
    error.addProperty("class", e.getClass().getName());
    error.addProperty("message", e.getMessage());
    if (e instanceof KurentoServerException server) {
      error.addProperty("code", server.getCode());
      error.addProperty("type", server.getErrorType());
      error.addProperty("serverMessage", server.getServerMessage());
      error.addProperty("data", server.getData());
    }
    if (e.getCause() != null && e.getCause() != e) {
      error.add("cause", describe(e.getCause()));
    }
    return error;
  }

  private static void event(String kind, String detail) {
    JsonObject line = new JsonObject();
    line.addProperty("event", kind);
    if (detail != null) {
      line.addProperty("detail", detail);
    }
    print(line);
  }

  private static synchronized void print(JsonObject line) {
    System.out.println(line);
    System.out.flush();
  }

  private static final class Events implements KurentoConnectionListener {
    @Override
    public void connected() {
      event("connected", null);
    }

    @Override
    public void connectionFailed() {
      event("connectionFailed", null);
    }

    @Override
    public void disconnected() {
      event("disconnected", null);
    }

    @Override
    public void reconnected(boolean sameServer) {
      event("reconnected", sameServer ? "same server" : "new server");
    }
  }
}
