//! MQTT topics and NATS subjects, as NATS's MQTT listener maps them: a topic level is a subject
//! token (`/` becomes `.`) and a `.` inside a level becomes `//`. The stream stores each device
//! message under its partition: `{prefix}.{partition}.{device_id}.{kind...}`.

/// A topic to its subject (`a/b.c` → `a.b//c`).
pub fn topic_to_subject(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&level.replace('.', "//"));
    }
    out
}

/// Where NATS's MQTT listener stores QoS 1 messages (before it PUBACKs them).
pub const MQTT_MSGS: &str = "$MQTT.msgs";

/// Leading tokens of a stored subject before the device's topic:
/// `$MQTT.msgs.{root}.{partition}`.
pub fn lead_tokens(root: &str) -> usize {
    2 + root.split('.').count() + 1
}

/// A stored subject back to the device's topic (`$MQTT.msgs.ff.7.p.d1.status` → `p/d1/status`),
/// dropping the `lead` tokens; `None` when nothing follows them.
pub fn stored_to_topic(subject: &str, lead: usize) -> Option<String> {
    let mut out = String::with_capacity(subject.len());
    for (i, token) in subject.split('.').skip(lead).enumerate() {
        if i > 0 {
            out.push('/');
        }
        // A '.' inside a level is `//`; device ids and kinds have none (no copy for those).
        let mut parts = token.split("//");
        out.push_str(parts.next().unwrap_or_default());
        for p in parts {
            out.push('.');
            out.push_str(p);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The device id in a stored subject: the token after the prefix's.
pub fn stored_device(subject: &str, lead: usize, prefix_tokens: usize) -> Option<&str> {
    subject.split('.').nth(lead + prefix_tokens)
}

/// The filter of one partition's consumer: that partition of one prefix's fleet.
pub fn partition_filter(root: &str, partition: u32, prefix: &str) -> String {
    format!(
        "{MQTT_MSGS}.{root}.{partition}.{}.>",
        topic_to_subject(prefix)
    )
}

/// A prefix as a part of a consumer or bucket name (letters, digits, `-` and `_` only).
pub fn name_part(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How many subject tokens the prefix takes.
pub fn prefix_tokens(prefix: &str) -> usize {
    prefix.split('/').count()
}

/// Where a reply to a device's topic is stored for its QoS 1 MQTT session.
pub fn reply_subject(topic: &str) -> String {
    format!("{MQTT_MSGS}.{}", topic_to_subject(topic))
}

/// The server's `mappings` block that partitions a prefix's device messages under `root`
/// (`docs/scale-out.md`): the engine cannot set mappings itself.
pub fn mappings(prefix: &str, partitions: u32, root: &str) -> String {
    let n = prefix_tokens(prefix);
    let id = n + 1;
    let prefix_dest: Vec<String> = (1..=n).map(|i| format!("{{{{wildcard({i})}}}}")).collect();
    let src_prefix = vec!["*"; n].join(".");
    let mut out = String::from("mappings = {\n");
    for (kind, extra_src, extra_dest) in [
        ("status", "", String::new()),
        ("data", "", String::new()),
        ("cmd.result", "", String::new()),
        (
            "chunk",
            ".*.*",
            format!(".{{{{wildcard({})}}}}.{{{{wildcard({})}}}}", id + 1, id + 2),
        ),
    ] {
        out.push_str(&format!(
            "    \"{src_prefix}.*.{kind}{extra_src}\": \"{root}.{{{{partition({partitions},{id})}}}}.{}.{{{{wildcard({id})}}}}.{kind}{extra_dest}\"\n",
            prefix_dest.join(".")
        ));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_subjects_map_as_the_nats_mqtt_listener_does() {
        assert_eq!(topic_to_subject("ESP32CAM/AA01/ack"), "ESP32CAM.AA01.ack");
        assert_eq!(
            topic_to_subject("p/d1/chunk/img.jpg/3"),
            "p.d1.chunk.img//jpg.3"
        );
        let lead = lead_tokens("ff");
        let stored = "$MQTT.msgs.ff.7.p.d1.chunk.img//jpg.3";
        assert_eq!(
            stored_to_topic(stored, lead).as_deref(),
            Some("p/d1/chunk/img.jpg/3")
        );
        assert_eq!(stored_device(stored, lead, 1), Some("d1"));
        assert_eq!(stored_to_topic("$MQTT.msgs.ff.7", lead), None);
        assert_eq!(reply_subject("p/d1/ack"), "$MQTT.msgs.p.d1.ack");
        assert_eq!(partition_filter("ff", 5, "a/b"), "$MQTT.msgs.ff.5.a.b.>");
        assert_eq!(name_part("a/b.c"), "a_b_c");
    }

    #[test]
    fn the_mappings_partition_device_messages_and_leave_the_replies_alone() {
        let m = mappings("ESP32CAM", 32, "ff");
        assert!(
            m.contains(
                r#""*.*.status": "ff.{{partition(32,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.status""#
            ),
            "{m}"
        );
        assert!(m.contains(r#""*.*.chunk.*.*": "ff.{{partition(32,2)}}.{{wildcard(1)}}.{{wildcard(2)}}.chunk.{{wildcard(3)}}.{{wildcard(4)}}""#), "{m}");
        assert!(!m.contains(".ack") && !m.contains("\"*.*.cmd\""));
    }
}
