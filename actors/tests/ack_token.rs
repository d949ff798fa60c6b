//! An ack token split among the actions one message feeds: the broker ack goes out once, with
//! the last share, and a dropped share holds it back (the broker then redelivers). A token
//! dropped unacknowledged is counted as a leak; an ack tried after the connection was lost is
//! refused; a real source moves the epoch as soon as it loses its connection. An ack that finds
//! the request queue full is held, in order, not leaked.

use fleetflow_actors::link::{ack, ack_all, AckToken, MqttLink};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Request};

/// A link whose client queues its requests on a channel the test reads.
fn recording_link() -> (MqttLink, flume::Receiver<Request>) {
    let (tx, rx) = flume::bounded(64);
    let link = MqttLink::new(AsyncClient::from_senders(tx), QoS::AtLeastOnce);
    link.next_epoch();
    (link, rx)
}

/// The packet ids of the broker acks queued so far.
fn acked(rx: &flume::Receiver<Request>) -> Vec<u16> {
    rx.try_iter()
        .filter_map(|r| match r {
            Request::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .collect()
}

fn received(link: &MqttLink, pkid: u16) -> AckToken {
    link.received();
    link.token(pkid)
}

#[test]
fn an_unsplit_token_is_acked_at_once_with_its_packet_id() {
    let (link, rx) = recording_link();
    ack(Some(received(&link, 7)));
    assert_eq!(acked(&rx), vec![7]);
}

#[test]
fn a_split_token_is_acked_only_when_every_share_is() {
    let (link, rx) = recording_link();
    let mut shares = received(&link, 42).split(3);
    assert_eq!(shares.len(), 3);
    let last = shares.pop().unwrap();
    for s in shares {
        ack(Some(s));
        assert_eq!(acked(&rx), Vec::<u16>::new(), "acked before the last share");
    }
    ack(Some(last));
    assert_eq!(acked(&rx), vec![42]);
}

#[test]
fn shares_acked_together_produce_one_broker_ack() {
    let (link, rx) = recording_link();
    ack_all(received(&link, 9).split(4));
    assert_eq!(acked(&rx), vec![9]);
}

#[test]
fn a_dropped_share_leaves_the_packet_unacknowledged() {
    let (link, rx) = recording_link();
    let mut shares = received(&link, 5).split(2);
    drop(shares.pop());
    ack_all(shares);
    assert_eq!(acked(&rx), Vec::<u16>::new());
    // The link still works: another packet's ack goes out.
    ack(Some(received(&link, 6)));
    assert_eq!(acked(&rx), vec![6]);
}

#[test]
fn splitting_into_one_or_zero_shares_keeps_a_single_token() {
    let (link, rx) = recording_link();
    let one = received(&link, 11).split(1);
    assert_eq!(one.len(), 1);
    let zero = received(&link, 12).split(0);
    assert_eq!(zero.len(), 1);
    ack_all(one.into_iter().chain(zero));
    assert_eq!(acked(&rx), vec![11, 12]);
}

#[test]
fn shares_of_two_packets_are_counted_apart() {
    let (link, rx) = recording_link();
    let mut a = received(&link, 1).split(2);
    let mut b = received(&link, 2).split(2);
    ack_all([a.pop().unwrap(), b.pop().unwrap()]);
    assert_eq!(acked(&rx), Vec::<u16>::new());
    ack_all(b);
    assert_eq!(acked(&rx), vec![2]);
    ack_all(a);
    assert_eq!(acked(&rx), vec![1]);
}

#[test]
fn a_share_from_an_earlier_connection_is_not_acked_on_the_new_one() {
    let (link, rx) = recording_link();
    let shares = received(&link, 3).split(2);
    link.next_epoch();
    ack_all(shares);
    assert_eq!(acked(&rx), Vec::<u16>::new());
    ack(Some(received(&link, 3)));
    assert_eq!(acked(&rx), vec![3]);
}

#[test]
fn an_ack_tried_after_the_connection_was_lost_is_not_queued() {
    let (link, rx) = recording_link();
    let before = received(&link, 1);
    // What the source does when a poll fails (before any reconnect and its CONNACK).
    link.next_epoch();
    ack(Some(before));
    assert_eq!(
        acked(&rx),
        Vec::<u16>::new(),
        "an old packet id reached the new session"
    );
    // Positive control: a packet of the new connection, same id, is acked.
    ack(Some(received(&link, 1)));
    assert_eq!(acked(&rx), vec![1]);
}

#[test]
fn a_dropped_token_is_counted_as_a_leak_and_bounds_the_connection() {
    let (link, rx) = recording_link();
    let (a, b, c) = (received(&link, 1), received(&link, 2), received(&link, 3));
    ack_all([a]);
    assert_eq!(link.leaks().0, 0, "an acked token is no leak");
    drop(b);
    let (n, age) = link.leaks();
    assert_eq!(n, 1);
    assert!(age.is_some());
    assert!(link.leaks_exceed(1, std::time::Duration::from_secs(3600)));
    assert!(!link.leaks_exceed(2, std::time::Duration::from_secs(3600)));
    assert!(link.leaks_exceed(2, std::time::Duration::ZERO), "age bound");
    ack_all([c]);
    assert_eq!(acked(&rx), vec![1, 3]);
    assert_eq!(link.unacked(), 1, "the leaked packet still holds its slot");
    // A new connection starts clean: the broker redelivers what leaked.
    link.next_epoch();
    assert_eq!(link.leaks(), (0, None));
    assert_eq!(link.unacked(), 0);
}

#[test]
fn a_packet_whose_shares_are_dropped_leaks_once() {
    let (link, rx) = recording_link();
    let mut shares = received(&link, 8).split(3);
    drop(shares.pop());
    drop(shares.pop());
    assert_eq!(link.leaks().0, 1);
    ack_all(shares);
    assert_eq!(acked(&rx), Vec::<u16>::new());
    assert_eq!(link.leaks().0, 1);
    // Splitting itself is no leak, and fully acked shares are none either.
    ack_all(received(&link, 9).split(2));
    assert_eq!(acked(&rx), vec![9]);
    assert_eq!(link.leaks().0, 1);
}

#[test]
fn a_token_of_a_closed_connection_dropped_later_does_not_count_against_the_new_one() {
    let (link, _rx) = recording_link();
    let old = received(&link, 4);
    link.next_epoch();
    drop(old);
    assert_eq!(link.leaks().0, 0);
}

/// A link whose acks go out in receive order, recording its requests.
fn ordered_link() -> (MqttLink, flume::Receiver<Request>) {
    let (tx, rx) = flume::bounded(64);
    let link = MqttLink::with_order(AsyncClient::from_senders(tx), QoS::AtLeastOnce, true);
    link.next_epoch();
    (link, rx)
}

#[test]
fn ordered_acks_go_out_in_receive_order_and_a_leak_holds_nothing_back() {
    let (link, rx) = ordered_link();
    let (a, b, c, d) = (
        received(&link, 1),
        received(&link, 2),
        received(&link, 3),
        received(&link, 4),
    );
    ack(Some(c));
    ack(Some(b));
    assert_eq!(acked(&rx), Vec::<u16>::new(), "held behind packet 1");
    ack(Some(a));
    assert_eq!(acked(&rx), vec![1, 2, 3]);
    let e = received(&link, 5);
    ack(Some(e));
    assert_eq!(acked(&rx), Vec::<u16>::new(), "held behind packet 4");
    drop(d); // leaked: skipped, not acknowledged
    assert_eq!(acked(&rx), vec![5]);
    assert_eq!(link.leaks().0, 1);
    // Unordered (positive control for the hold): the same sequence acks at once.
    let (link, rx) = recording_link();
    let (a, b) = (received(&link, 1), received(&link, 2));
    ack(Some(b));
    assert_eq!(acked(&rx), vec![2]);
    ack(Some(a));
    assert_eq!(acked(&rx), vec![1]);
}

#[test]
fn ordered_slots_of_a_closed_connection_release_nothing_on_the_new_one() {
    let (link, rx) = ordered_link();
    let old = received(&link, 1);
    link.next_epoch();
    let new = received(&link, 1);
    ack(Some(old));
    assert_eq!(acked(&rx), Vec::<u16>::new());
    ack(Some(new));
    assert_eq!(acked(&rx), vec![1]);
}

#[test]
fn an_ack_that_finds_the_request_queue_full_is_held_in_order_not_leaked() {
    // A queue of 2: a broker that sends past the receive maximum can have more packets in
    // flight than the client's request queue holds.
    let (tx, rx) = flume::bounded(2);
    let link = MqttLink::with_order(AsyncClient::from_senders(tx), QoS::AtLeastOnce, true);
    link.next_epoch();
    let tokens: Vec<AckToken> = (1..=5).map(|p| received(&link, p)).collect();
    ack_all(tokens);
    assert_eq!(link.held(), 3, "packets 3, 4 and 5 wait for room");
    assert_eq!(
        link.leaks().0,
        0,
        "a full queue is no leak (no reconnect, no redelivery)"
    );
    assert_eq!(link.unacked(), 3);
    assert_eq!(link.flush_held(), 0, "still full: nothing moves");
    assert_eq!(acked(&rx), vec![1, 2]);
    // A later ack queues behind the held ones even though the queue has room now.
    ack(Some(received(&link, 6)));
    assert_eq!(acked(&rx), Vec::<u16>::new());
    assert_eq!(link.flush_held(), 2);
    assert_eq!(acked(&rx), vec![3, 4]);
    assert_eq!(link.flush_held(), 2);
    assert_eq!(acked(&rx), vec![5, 6]);
    assert_eq!((link.held(), link.unacked()), (0, 0));
    // With nothing held an ack goes straight to the queue again.
    ack(Some(received(&link, 7)));
    assert_eq!(acked(&rx), vec![7]);
}

#[test]
fn held_acks_of_a_closed_connection_never_reach_the_next_one() {
    let (tx, rx) = flume::bounded(1);
    let link = MqttLink::with_order(AsyncClient::from_senders(tx), QoS::AtLeastOnce, true);
    link.next_epoch();
    ack_all([received(&link, 1), received(&link, 2)]);
    assert_eq!(link.held(), 1);
    link.next_epoch();
    assert_eq!(link.held(), 0);
    assert_eq!(acked(&rx), vec![1]);
    assert_eq!(link.flush_held(), 0);
    // Positive control: the new connection's own ack goes out.
    ack(Some(received(&link, 2)));
    assert_eq!(acked(&rx), vec![2]);
}

#[test]
fn unordered_acks_are_held_too_and_the_pipeline_count_follows_tokens_not_connections() {
    let (tx, rx) = flume::bounded(1);
    let link = MqttLink::new(AsyncClient::from_senders(tx), QoS::AtLeastOnce);
    link.next_epoch();
    let (a, b, c) = (received(&link, 1), received(&link, 2), received(&link, 3));
    assert_eq!(link.in_pipeline(), 3);
    ack(Some(b));
    ack(Some(a));
    assert_eq!(
        (link.held(), link.leaks().0),
        (1, 0),
        "packet 1 waits for room"
    );
    assert_eq!(
        link.in_pipeline(),
        1,
        "acked tokens left the pipeline, held or not"
    );
    assert_eq!(acked(&rx), vec![2]);
    assert_eq!(link.flush_held(), 1);
    assert_eq!(acked(&rx), vec![1]);
    // A reconnect resets the connection's unacked count, not what is still in the pipeline.
    link.next_epoch();
    assert_eq!(link.unacked(), 0);
    assert_eq!(link.in_pipeline(), 1, "packet 3 is still being processed");
    drop(c); // of the old connection: stale, and out of the pipeline
    assert_eq!(link.in_pipeline(), 0);
}

#[test]
fn a_split_packet_leaves_the_pipeline_once_whatever_its_shares_do() {
    let (link, _rx) = ordered_link();
    // Acked, dropped, acked.
    let mut s = received(&link, 1).split(3);
    ack(s.pop());
    drop(s.pop());
    assert_eq!(
        link.in_pipeline(),
        0,
        "the dropped share gave the packet up"
    );
    ack(s.pop());
    assert_eq!(link.in_pipeline(), 0);
    // Dropped first, then the others acked.
    let mut s = received(&link, 2).split(3);
    drop(s.pop());
    ack_all(s);
    assert_eq!(link.in_pipeline(), 0);
    // Positive control: every share acked leaves it only with the last one.
    let mut s = received(&link, 3).split(2);
    ack(s.pop());
    assert_eq!(link.in_pipeline(), 1);
    ack(s.pop());
    assert_eq!(link.in_pipeline(), 0);
}

#[tokio::test]
async fn a_read_pause_ends_when_a_token_leaves_the_pipeline_not_before() {
    let (link, _rx) = ordered_link();
    let (a, b) = (received(&link, 1), received(&link, 2));
    let waiting = {
        let link = link.clone();
        tokio::spawn(async move { link.pipeline_below(2).await })
    };
    // Two in the pipeline, bound 2: the pause holds.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "nothing left the pipeline yet");
    ack(Some(a));
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the settled token woke the pause")
        .unwrap();
    // Below the bound already: no wait at all.
    tokio::time::timeout(std::time::Duration::from_secs(5), link.pipeline_below(2))
        .await
        .expect("one in the pipeline is below 2");
    drop(b);
}
