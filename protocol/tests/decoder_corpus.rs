//! Runs the hostile-input corpus in `tests/corpus/` through the decoder for every topic kind:
//! each file must decode or be refused with a protocol code (2101, 2102, 2103, 2105), never panic. (cargo-fuzz needs a nightly
//! toolchain, which this project does not use; the corpus and the proptests stand in for it.)

use bytes::Bytes;
use fleetflow_protocol::errors::ErrorCode;
use fleetflow_protocol::message::{decode, DecodeLimits};
use fleetflow_protocol::topic::TopicKind;

#[test]
fn every_corpus_file_decodes_or_is_refused_with_a_protocol_code_and_never_panics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        for kind in [
            TopicKind::Status,
            TopicKind::Data,
            TopicKind::CmdResult,
            TopicKind::Chunk {
                capture_id: "a".into(),
                index: 0,
            },
        ] {
            let r = std::panic::catch_unwind(|| decode(&kind, &bytes, DecodeLimits::default()));
            let r = r.unwrap_or_else(|_| panic!("decoder panicked on {}", path.display()));
            if let Err(e) = r {
                assert!(
                    matches!(
                        e.code,
                        ErrorCode::Malformed
                            | ErrorCode::BadField
                            | ErrorCode::NoPayload
                            | ErrorCode::BadBase64
                    ),
                    "{}: {:?}",
                    path.display(),
                    e
                );
            }
        }
        n += 1;
    }
    assert!(n >= 20, "corpus has {n} files");
}
