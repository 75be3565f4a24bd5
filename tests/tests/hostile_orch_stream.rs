//! Hostile input, end to end: an authenticated host misbehaving on the
//! orchestration command stream (`Orchestration.Attach`): malformed and
//! oversized frames, no hello, and results built to trip the master's
//! handling of them. (Forged, replayed, expired and injected commands are
//! covered by `orch_e2e.rs`.) Each is refused with a specific status and
//! the master keeps serving.

mod hostile_common;

use hostile_common::*;
use tonic::Code;
use troupe_proto::v1::orchestration_client::OrchestrationClient;
use troupe_proto::v1::{AgentHello, AgentMessage, CommandResult, agent_message};
use troupe_tests::{Master, tally};

const ATTACH: &str = "/troupe.v1.Orchestration/Attach";

fn hello() -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(AgentHello {
            role: "web".into(),
            facts_json: br#"{"os.family":"Debian"}"#.to_vec(),
        })),
    }
}

fn result(status: String, message: String) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Result(CommandResult {
            command_id: vec![7; 16],
            node: "someone-else".into(),
            status,
            message,
            data_json: Vec::new(),
            duration_ms: 1,
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_streams_are_refused() {
    let m = Master::start();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    let ch = m.agent_channel("web1").await.unwrap();

    let cases: Vec<(&str, Vec<u8>, Code, &str)> = vec![
        (
            "a stream whose first frame is cut short",
            frame(0, 50, &[0x0a, 0x02]),
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "a first frame of 1 GiB",
            frame(0, 1 << 30, &[]),
            Code::OutOfRange,
            "too large",
        ),
        (
            "a first message of the wrong wire type",
            msg(&[0x08, 0x01]),
            Code::Internal,
            "invalid wire type",
        ),
        (
            "a result before any hello",
            msg(&[0x12, 0x00]),
            Code::InvalidArgument,
            "the first message must be a hello",
        ),
        (
            "an empty message instead of a hello",
            msg(&[]),
            Code::InvalidArgument,
            "the first message must be a hello",
        ),
    ];
    for (what, body, code, needle) in cases {
        let s = raw_call(&ch, ATTACH, body, &[]).await;
        assert_status(&s, code, needle, what);
        tally::hostile("orch-stream", what, true);
    }
    assert!(!m.log().contains("panicked"), "{}", m.log());
}

/// An agent's result whose status and message are long and end inside a
/// multi-byte character where the master cuts them (64 and 4096 bytes).
#[tokio::test(flavor = "multi_thread")]
async fn results_cut_inside_a_character_do_not_panic_the_master() {
    let m = Master::start();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    let ch = m.agent_channel("web1").await.unwrap();
    let status = format!("{}é", "s".repeat(63));
    let message = format!("{}é", "m".repeat(4095));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello()).await.unwrap();
    tx.send(result(status, message)).await.unwrap();
    let mut stream = OrchestrationClient::new(ch.clone())
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    drop(tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.message()).await;
    assert!(
        !m.log().contains("panicked"),
        "the master panicked on an agent's result:\n{}",
        m.log()
    );
    tally::hostile("orch-stream", "result cut inside a UTF-8 character", true);
}
