//! Ready-to-paste connection snippets for a new credential: Arduino/ESP32 (PubSubClient),
//! Python (paho-mqtt 2.x) and Node.js (mqtt.js). The README's "Connect a device" section is
//! these same snippets rendered with example values, and a test keeps the two identical.

use serde::Serialize;

/// What a snippet needs.
#[derive(Debug, Clone)]
pub struct SnippetInput<'a> {
    /// Broker host as devices reach it.
    pub host: &'a str,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts`).
    pub tls: bool,
    /// The credential.
    pub username: &'a str,
    /// Its password.
    pub password: &'a str,
    /// `org_{id}/devices`.
    pub topic_prefix: &'a str,
}

/// The three snippets.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Snippets {
    /// Arduino/ESP32 with PubSubClient.
    pub arduino: String,
    /// Python with paho-mqtt 2.x.
    pub python: String,
    /// Node.js with mqtt.js.
    pub node: String,
}

/// The device id used in the snippets: the device's MAC address (docs/protocol.md §1).
pub const EXAMPLE_DEVICE: &str = "AABBCCDDEEFF";

/// Renders the snippets.
pub fn render(i: &SnippetInput<'_>) -> Snippets {
    let SnippetInput {
        host,
        port,
        tls,
        username,
        password,
        topic_prefix,
    } = i;
    let dev = EXAMPLE_DEVICE;
    let (wifi_client, tls_setup) = if *tls {
        (
            "WiFiClientSecure net;",
            "  net.setCACert(BROKER_CA_PEM);  // the CA that signs the broker's certificate\n",
        )
    } else {
        ("WiFiClient net;", "")
    };
    let arduino = format!(
        r#"#include <WiFi.h>
{include}#include <PubSubClient.h>

const char* MQTT_HOST = "{host}";
const int   MQTT_PORT = {port};
const char* MQTT_USER = "{username}";
const char* MQTT_PASS = "{password}";
const char* DEVICE_ID = "{dev}";  // the MAC address, 12 hex digits

{wifi_client}
PubSubClient mqtt(net);

void connectMqtt() {{
{tls_setup}  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  while (!mqtt.connect(DEVICE_ID, MQTT_USER, MQTT_PASS)) delay(2000);
  mqtt.publish("{topic_prefix}/{dev}/status", "{{\"status\":\"online\"}}");
}}
"#,
        include = if *tls {
            "#include <WiFiClientSecure.h>\n"
        } else {
            ""
        },
    );
    let python = format!(
        r#"import json
import paho.mqtt.client as mqtt

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="{dev}", protocol=mqtt.MQTTv5)
client.username_pw_set("{username}", "{password}")
{tls}client.connect("{host}", {port})
client.loop_start()
client.publish("{topic_prefix}/{dev}/status", json.dumps({{"status": "online"}}), qos=1).wait_for_publish()
"#,
        tls = if *tls {
            "client.tls_set(ca_certs=\"broker-ca.pem\")\n"
        } else {
            ""
        },
    );
    let node = format!(
        r#"const mqtt = require("mqtt");

const client = mqtt.connect("{scheme}://{host}:{port}", {{
  clientId: "{dev}",
  username: "{username}",
  password: "{password}",
  protocolVersion: 5,
}});
client.on("connect", () => {{
  client.publish("{topic_prefix}/{dev}/status", JSON.stringify({{ status: "online" }}), {{ qos: 1 }});
}});
"#,
        scheme = if *tls { "mqtts" } else { "mqtt" },
    );
    Snippets {
        arduino,
        python,
        node,
    }
}

/// The example values the README's snippets are rendered with.
pub fn readme_example() -> Snippets {
    render(&SnippetInput {
        host: "broker.example.com",
        port: 1883,
        tls: false,
        username: "ff_0123456789abcdef",
        password: "<the password shown once>",
        topic_prefix: "org_42/devices",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_shows_exactly_the_snippets_the_api_returns() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let s = readme_example();
        for (name, text) in [
            ("arduino", &s.arduino),
            ("python", &s.python),
            ("node", &s.node),
        ] {
            assert!(
                readme.contains(text.as_str()),
                "README.md's \"Connect a device\" section is missing the {name} snippet; paste this:\n{text}"
            );
        }
    }

    #[test]
    fn tls_snippets_set_up_tls() {
        let s = render(&SnippetInput {
            host: "h",
            port: 8883,
            tls: true,
            username: "u",
            password: "p",
            topic_prefix: "org_1/devices",
        });
        assert!(s.arduino.contains("WiFiClientSecure"));
        assert!(s.python.contains("tls_set"));
        assert!(s.node.contains("mqtts://h:8883"));
    }
}
