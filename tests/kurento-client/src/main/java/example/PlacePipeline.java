package example;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import org.kurento.client.KurentoClient;
import org.kurento.client.MediaPipeline;
import org.kurento.client.internal.server.KurentoServerException;
import org.kurento.commons.exception.KurentoException;

/**
 * Where an application server creates a call's MediaPipeline when memprobe guards its KMSes:
 * on a KMS whose memprobe says it takes new sessions (/ready is 200), the one with the most
 * headroom first; and if that KMS's gate refuses the create (it began draining meanwhile),
 * on the next one.
 *
 * <pre>
 * java -cp memprobe-kurento-client.jar example.PlacePipeline \
 *     http://kms-a:8899=ws://kms-a:8888/kurento http://kms-b:8899=ws://kms-b:8888/kurento
 * </pre>
 *
 * Each argument is a KMS: its memprobe's address, then its gate's (--kms-gate) WebSocket.
 */
public final class PlacePipeline {
  /** The gate's error code: this KMS takes no new pipelines, create it on another. */
  static final int KMS_DRAINING = -32099;

  record Kms(String memprobe, String gate) {}

  static final HttpClient http =
      HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(2)).build();

  public static void main(String[] args) {
    List<Kms> fleet = new ArrayList<>();
    for (String arg : args) {
      String[] urls = arg.split("=", 2);
      if (urls.length != 2) {
        System.err.println("'" + arg + "' is not MEMPROBE-URL=GATE-URL"
            + " (try http://kms-a:8899=ws://kms-a:8888/kurento)");
        System.exit(2);
      }
      fleet.add(new Kms(urls[0], urls[1]));
    }
    for (Kms kms : readyByHeadroom(fleet)) {
      KurentoClient client = null;
      try {
        client = KurentoClient.create(kms.gate());
        MediaPipeline pipeline = client.createMediaPipeline();
        System.out.println("created " + pipeline.getId() + " on " + kms.gate());
        // A real application keeps its client (one per KMS) and the pipeline for the call:
        // destroy() below ends the client's session, and KMS frees the session's pipelines.
        return;
      } catch (KurentoServerException e) {
        if (e.getCode() != KMS_DRAINING) {
          throw e;
        }
        System.out.println(kms.gate() + " refused: " + e.getServerMessage());
      } catch (KurentoException e) {
        System.out.println(kms.gate() + " unreachable: " + e.getMessage());
      } finally {
        if (client != null) {
          client.destroy();
        }
      }
    }
    System.err.println("no KMS takes new sessions now: try again shortly");
    System.exit(1);
  }

  /** The KMSes that take new sessions, the one with the most memory to spare first. */
  static List<Kms> readyByHeadroom(List<Kms> fleet) {
    record Ready(Kms kms, long headroomBytes) {}
    List<Ready> ready = new ArrayList<>();
    for (Kms kms : fleet) {
      try {
        if (get(kms.memprobe() + "/ready").statusCode() == 200) {
          ready.add(new Ready(kms, headroomBytes(kms)));
        }
      } catch (Exception e) {
        System.out.println(kms.memprobe() + " did not answer: " + e);
      }
    }
    ready.sort(Comparator.comparingLong(Ready::headroomBytes).reversed());
    return ready.stream().map(Ready::kms).toList();
  }

  /** Bytes until memprobe's threshold, from its /status (0 while memory is not known yet). */
  static long headroomBytes(Kms kms) throws Exception {
    JsonObject status = JsonParser.parseString(get(kms.memprobe() + "/status").body())
        .getAsJsonObject();
    JsonElement headroom = status.get("headroom_bytes");
    return headroom == null || headroom.isJsonNull() ? 0 : headroom.getAsLong();
  }

  static HttpResponse<String> get(String url) throws Exception {
    HttpRequest request =
        HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(2)).build();
    return http.send(request, HttpResponse.BodyHandlers.ofString());
  }
}
