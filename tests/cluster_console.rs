//! Cluster mode (issue 16): the console of either instance, in a real browser over WebDriver,
//! shows a device's live actor wherever it lives, and its "restart actor" button restarts the
//! actor on the instance that holds it.

use crate::cluster_harness::{announce, device, restarts_ran_on_one_instance, two_engines, TOKEN};
use crate::common::browser::Browser;
use crate::common::engine::Options;

#[tokio::test(flavor = "multi_thread")]
async fn the_console_of_either_instance_shows_a_devices_actor_and_restarts_it_where_it_lives() {
    let (prefix, e0, e1) = two_engines("u", Options::default()).await;
    let id = device(21);
    announce(&e0, &prefix, &id).await;

    let b = Browser::start().await;
    for via in [&e0, &e1] {
        b.login(&via.http, TOKEN).await;
        // The devices list: the actor column, from whichever instance holds it.
        b.wait_text(&format!("#devices tr[data-device=\"{id}\"]"), "running")
            .await;
        // The device page's button restarts it where it lives.
        b.goto(&format!("{}/#device={id}", via.http)).await;
        b.click(&format!("button[data-restart-device=\"{id}\"]"))
            .await;
        b.wait_text("#msg", "restarted (completed)").await;
    }
    restarts_ran_on_one_instance(&e0, &e1, 2.0).await;
}
