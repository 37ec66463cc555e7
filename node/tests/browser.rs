//! The web page in a real browser: Debian's headless `chromium`, driven through `chromedriver`
//! (WebDriver, with fantoccini), against a real 3-node cluster.
//!
//! 1. Two people on two nodes sign up, activate their accounts from the mail in the outbox,
//!    log in, join one room and talk both ways.
//! 2. A PNG is converted to JPEG: the progress bar reaches done and the download link returns
//!    a JPEG.
//! 3. The node one tab is connected to is killed: the tab reconnects to another node by itself
//!    and the conversation goes on with no gap and no duplicate (checked on the seqs the page
//!    renders), including a message typed right after the kill.
//! 4. A message that is HTML (`<img src=x onerror=alert(1)>`) is shown as text.
//!
//! And: older messages load as one scrolls up a long room, without a gap.
//!
//! Screenshots (the "check your mail" screen, the chat at desktop and phone widths, the chat
//! after a failover, the conversion screen, the profile) go to `target/browser-screenshots/`;
//! their paths are printed, as are the page's weight and time to interactive on first load.
//! A step that times out saves the page as `failure.png` there.
//!
//! Each test starts its own cluster and its own chromedriver (on a free port, killed by pid,
//! with the browsers it started, at the end); a lock runs them one at a time (2 cores).
//! Needs `chromium` and `chromium-driver` (`.ci/install-deps` installs them). The browser
//! harness is in `browser/harness.rs`. `ACTORHUB_NODE_BIN` runs the nodes from another build
//! (e.g. release, to measure the page as users get it).

#[path = "browser/harness.rs"]
mod harness;

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token_named};
use chaos::cluster::{ClusterBuilder, NODE_BINARY_ENV, TestCluster};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use harness::{Browser, Chromedriver, DESKTOP, PHONE, POLL, WAIT, load_metrics};

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const PASSWORD: &str = "correct horse battery staple";

// ---- the cluster and accounts ----

/// The nodes run this build's `node`, or the binary named by `ACTORHUB_NODE_BIN` (e.g. a
/// release build, to measure the page as users get it).
async fn cluster() -> TestCluster {
    let binary = std::env::var_os(NODE_BINARY_ENV)
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_node")), PathBuf::from);
    ClusterBuilder::new(binary)
        .nodes(3)
        .setting("users", "argon2_memory_kib", 1024)
        .setting("users", "argon2_iterations", 1)
        // The bots post as fast as acks come back, above the default 50 frames/s.
        .setting("sessions", "messages_per_second", 10_000)
        .start()
        .await
        .expect("3-node cluster starts")
}

/// The activation token of the newest mail to `email` in any node's outbox.
async fn activation_token(cluster: &TestCluster, email: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let to = format!("To: {email}\r\n");
    loop {
        let mut mails: Vec<PathBuf> = std::fs::read_dir(cluster.dir().join("data"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|node| std::fs::read_dir(node.path().join("outbox")).ok())
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "eml"))
            .collect();
        mails.sort();
        let mail = mails
            .iter()
            .rev()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .find(|text| text.contains(&to));
        if let Some(mail) = mail {
            let start = mail.find("token=").expect("a link with a token") + "token=".len();
            return mail[start..]
                .chars()
                .take_while(|char| char.is_ascii_hexdigit() || *char == '.')
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "no mail to {email} within {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Signs up on `node` through the page, activates from the mail, logs in; returns the browser
/// connected to `node`.
async fn sign_up(
    driver: &Chromedriver,
    cluster: &TestCluster,
    node: &str,
    name: &str,
    email: &str,
) -> Browser {
    sign_up_showing(driver, cluster, node, name, email, None).await
}

/// [`sign_up`], saving a screenshot of the "check your mail" screen as `screenshot`.
async fn sign_up_showing(
    driver: &Chromedriver,
    cluster: &TestCluster,
    node: &str,
    name: &str,
    email: &str,
    screenshot: Option<&str>,
) -> Browser {
    let browser = driver.browser().await;
    let url = cluster.http_url(node);
    browser.client.goto(&url).await.expect("open the page");
    browser.find("#login-form").await;
    browser.click("a[href='#/signup']").await;
    browser.type_into("#signup-name", name).await;
    browser.type_into("#signup-email", email).await;
    browser.type_into("#signup-password", PASSWORD).await;
    browser.click("#signup-submit").await;
    browser.find("#check-mail-text").await;
    // The page says where the mail is (the default mailer writes to the node's outbox).
    let outbox = browser
        .find("#outbox-path")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        outbox.contains(&format!("data/{node}/outbox")),
        "the page should name {node}'s outbox, it says {outbox:?}"
    );
    if let Some(name) = screenshot {
        browser.screenshot(name).await;
    }

    let token = activation_token(cluster, email).await;
    browser
        .client
        .goto(&format!("{url}/api/users/verify?token={token}"))
        .await
        .expect("follow the activation link");
    let page = browser.find("body").await.text().await.expect("text");
    assert!(
        page.contains("Account activated"),
        "activation page: {page}"
    );
    browser.click("a[href='/']").await;

    browser.type_into("#login-email", email).await;
    browser.type_into("#login-password", PASSWORD).await;
    browser.click("#login-submit").await;
    assert_eq!(browser.connected_node().await, node, "{name}'s tab");
    browser
}

/// Creates a room from `browser`'s chat screen; returns its id.
async fn create_room(browser: &Browser, name: &str) -> String {
    browser.type_into("#new-room-name", name).await;
    browser.click("#new-room-form button[type=submit]").await;
    browser.find("#composer").await;
    let id = browser
        .wait_until(
            "the room to be live",
            "return document.getElementById('room-title')?.textContent === '#' + arguments[0]\
               && document.getElementById('room-status')?.dataset.state === 'live'\
               ? decodeURIComponent(location.hash.split('/')[2] || '') : '';",
            vec![json!(name)],
        )
        .await;
    id.as_str().expect("room id").to_string()
}

/// Opens room `id` from the Browse list (joining it) and waits until it is live.
async fn join_room(browser: &Browser, id: &str) {
    browser
        .click(&format!("#other-rooms a[data-room='{id}']"))
        .await;
    browser
        .wait_until(
            "the room to be live",
            "return location.hash === '#/chat/' + encodeURIComponent(arguments[0])\
               && document.getElementById('room-status')?.dataset.state === 'live';",
            vec![json!(id)],
        )
        .await;
}

/// Two people on n1 and n2, in one room.
async fn two_people_in_a_room(
    driver: &Chromedriver,
    cluster: &TestCluster,
) -> (Browser, Browser, String) {
    two_people_in_a_room_showing(driver, cluster, None).await
}

async fn two_people_in_a_room_showing(
    driver: &Chromedriver,
    cluster: &TestCluster,
    check_mail_screenshot: Option<&str>,
) -> (Browser, Browser, String) {
    let ada = sign_up_showing(
        driver,
        cluster,
        "n1",
        "Ada Lovelace",
        "ada@example.com",
        check_mail_screenshot,
    )
    .await;
    let room = create_room(&ada, "Design review").await;
    let grace = sign_up(driver, cluster, "n2", "Grace Hopper", "grace@example.com").await;
    join_room(&grace, &room).await;
    (ada, grace, room)
}

fn assert_gapless(seqs: &[u64], who: &str) {
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "{who}'s tab shows seqs {seqs:?}: a gap or a duplicate"
    );
}

// ---- the tests ----

#[tokio::test]
async fn two_people_on_two_nodes_sign_up_and_chat() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let driver = Chromedriver::start().await;

    // First load in a fresh profile: what the page weighs and when it is usable.
    let first = driver.browser().await;
    first
        .client
        .goto(&cluster.http_url("n3"))
        .await
        .expect("open the page");
    first.find("#login-form").await;
    let cold = load_metrics(&first).await;
    println!("first load (cold cache, localhost): {cold}");
    assert!(
        cold["app_interactive_ms"].is_number(),
        "the page marks when it is interactive"
    );
    first.client.refresh().await.expect("reload");
    first.find("#login-form").await;
    println!(
        "reload (warm cache, revalidated): {}",
        load_metrics(&first).await
    );
    first.close().await;

    let (ada, grace, design_review) =
        two_people_in_a_room_showing(&driver, &cluster, Some("check-mail.png")).await;
    // Each sees the other online in the room, though they use different nodes.
    for (browser, other, me) in [
        (&ada, "Grace Hopper", "Ada Lovelace (you)"),
        (&grace, "Ada Lovelace", "Grace Hopper (you)"),
    ] {
        let online = browser
            .wait_until(
                "the other person listed online",
                "const names = [...document.querySelectorAll('#room-online .online-user')]\
                   .map((item) => item.textContent);\
                 return names.includes(arguments[0]) ? names : null;",
                vec![json!(other)],
            )
            .await;
        assert_eq!(online, json!([me, other]), "yourself first");
    }
    ada.post("Morning! Is the cluster dashboard ready for the review?")
        .await;
    grace
        .wait_for_messages(&["Morning! Is the cluster dashboard ready for the review?"])
        .await;
    grace
        .post("Almost: n2 is serving me, the rest is on n1 and n3.")
        .await;
    ada.post("Perfect, messages cross nodes without a hitch.")
        .await;
    // Enter sends too.
    grace.type_into("#composer", "Ship it ✓\n").await;
    let expected = [
        "Morning! Is the cluster dashboard ready for the review?",
        "Almost: n2 is serving me, the rest is on n1 and n3.",
        "Perfect, messages cross nodes without a hitch.",
        "Ship it ✓",
    ];
    let seen_by_ada = ada.wait_for_messages(&expected).await;
    let seen_by_grace = grace.wait_for_messages(&expected).await;
    assert_gapless(&seen_by_ada, "Ada");
    assert_eq!(seen_by_ada, seen_by_grace);

    // A second room: what arrives there while Ada reads the first is counted as unread.
    let release = create_room(&grace, "Release planning").await;
    ada.click("a.tab[href='#/convert']").await;
    ada.click("a.tab[href='#/chat']").await;
    join_room(&ada, &release).await;
    ada.click(&format!("#my-rooms a[data-room='{design_review}']"))
        .await;
    ada.wait_until(
        "Ada to be back in Design review",
        "return document.getElementById('room-title')?.textContent === '#Design review';",
        vec![],
    )
    .await;
    grace.post("Draft of the release notes is up.").await;
    grace.post("Please review before Friday.").await;
    ada.wait_until(
        "two unread messages counted on the other room",
        "const badge = document.querySelector(`#my-rooms a[data-room='${arguments[0]}'] .badge`);\
             return badge && badge.textContent === '2' ? badge.textContent : null;",
        vec![json!(release)],
    )
    .await;
    let title = ada.client.title().await.expect("title");
    assert_eq!(title, "(2) ActorHub");

    ada.screenshot("chat.png").await;
    ada.client
        .set_window_size(PHONE.0, PHONE.1)
        .await
        .expect("phone size");
    ada.find("#composer").await;
    ada.screenshot("chat-phone.png").await;
    ada.client
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .expect("desktop size");

    ada.close().await;
    grace.close().await;
}

/// A small PNG: a gradient, so the conversion has real pixels to encode.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x * 255 / width) as u8, (y * 255 / height) as u8, 160, 255])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("encode PNG");
    bytes
}

#[tokio::test]
async fn a_png_is_converted_to_jpeg_with_live_progress() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let driver = Chromedriver::start().await;
    let ada = sign_up(&driver, &cluster, "n1", "Ada Lovelace", "ada@example.com").await;
    let files = tempfile::tempdir().expect("temp dir");

    ada.click("a.tab[href='#/convert']").await;
    ada.find("#convert-form").await;
    let mut jobs = Vec::new();
    for (name, target) in [("holiday-photo.png", "jpeg"), ("team-banner.png", "webp")] {
        let path = files.path().join(name);
        std::fs::write(&path, png(320, 200)).expect("write PNG");
        ada.find("#file-input")
            .await
            .send_keys(&path.display().to_string())
            .await
            .expect("choose the file");
        let chosen = ada.find("#chosen-file").await.text().await.expect("text");
        assert_eq!(chosen, name);
        ada.find("#target")
            .await
            .select_by_value(target)
            .await
            .expect("choose the target");
        ada.click("#convert-submit").await;
        // The upload becomes a job; its row follows the job's frames to the end.
        let job = ada
            .wait_until(
                "the job to be done",
                "const row = Array.from(document.querySelectorAll('#jobs li.job'))\
                   .find(row => row.querySelector('.file-name')?.textContent === arguments[0]);\
                 return row && row.dataset.state === 'done'\
                   && row.querySelector('[role=progressbar]').getAttribute('aria-valuenow') === '100'\
                   ? { job: row.dataset.job, href: row.querySelector('a.download')?.href } : null;",
                vec![json!(name)],
            )
            .await;
        jobs.push((job, target));
    }

    // The download link returns the converted file (with the tab's own token).
    let token = ada
        .run(
            "return JSON.parse(sessionStorage.getItem('actorhub.session')).token;",
            vec![],
        )
        .await;
    let (jpeg_job, _) = &jobs[0];
    let href = jpeg_job["href"].as_str().expect("a download link");
    let response = reqwest::Client::new()
        .get(href)
        .bearer_auth(token.as_str().expect("token"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200, "download {href}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("image/jpeg")
    );
    let bytes = response.bytes().await.expect("body");
    assert!(
        bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "not a JPEG: starts with {:02x?}",
        &bytes[..bytes.len().min(4)]
    );
    // The page's own download (fetch with the token, then a file) works too.
    let page_download = ada
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             const token = JSON.parse(sessionStorage.getItem('actorhub.session')).token;\
             fetch(arguments[0], { headers: { Authorization: 'Bearer ' + token } })\
               .then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b).slice(0, 3))))\
               .catch(e => done(String(e)));",
            vec![json!(href)],
        )
        .await
        .expect("fetch in the page");
    assert_eq!(page_download, json!([0xFF, 0xD8, 0xFF]));

    ada.screenshot("convert.png").await;

    // The profile: a bio and a photo.
    ada.click("a.tab[href='#/profile']").await;
    ada.type_into(
        "#profile-bio",
        "Writes the first programs; reviews everyone else's.",
    )
    .await;
    ada.click("#profile-save").await;
    let photo = files.path().join("portrait.png");
    std::fs::write(&photo, png(256, 256)).expect("write photo");
    ada.find("#photo-input")
        .await
        .send_keys(&photo.display().to_string())
        .await
        .expect("choose a photo");
    ada.find("#profile-photo img").await;
    let saved = ada
        .wait_until(
            "the saved profile",
            "return fetch('/api/users/me', { headers: { Authorization: 'Bearer '               + JSON.parse(sessionStorage.getItem('actorhub.session')).token } })               .then(r => r.json()).then(user => user.bio && user.photo_url ? user : null);",
            vec![],
        )
        .await;
    assert_eq!(
        saved["bio"],
        "Writes the first programs; reviews everyone else's."
    );
    ada.screenshot("profile.png").await;
    ada.close().await;
}

#[tokio::test]
async fn a_tab_whose_node_dies_reconnects_elsewhere_without_gap_or_duplicate() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let driver = Chromedriver::start().await;
    let (ada, grace, _room) = two_people_in_a_room(&driver, &cluster).await;
    ada.post("Before: one").await;
    grace.post("Before: two").await;
    ada.wait_for_messages(&["Before: one", "Before: two"]).await;
    grace
        .wait_for_messages(&["Before: one", "Before: two"])
        .await;

    // Record the connection states Grace's tab goes through.
    grace
        .run(
            "window.testStates = [];\
             new MutationObserver(() => window.testStates.push(document.body.dataset.connection))\
               .observe(document.body, { attributes: true, attributeFilter: ['data-connection'] });",
            vec![],
        )
        .await;
    cluster.kill("n2");
    // Typed at once, while the tab is losing its node: sent when it is back, once.
    grace.post("During: typed as n2 died").await;
    ada.post("During: from n1").await;

    let node = grace
        .wait_until(
            "Grace's tab to be connected to another node",
            "const current = document.querySelector('#cluster-nodes li.current')?.dataset.node;\
             return document.getElementById('connection')?.dataset.state === 'open'\
               && current !== 'n2' ? current : '';",
            vec![],
        )
        .await;
    assert!(node == "n1" || node == "n3", "Grace's tab is on {node}");
    // The page, still served by the dead n2's origin, may call its new node's API with its
    // token (CORS for the cluster's own origins).
    let status = grace
        .run(
            "return fetch(arguments[0] + '/api/rooms', { headers: { Authorization: 'Bearer '\
               + JSON.parse(sessionStorage.getItem('actorhub.session')).token } })\
               .then(r => r.status, e => String(e));",
            vec![json!(cluster.http_url(node.as_str().expect("node id")))],
        )
        .await;
    assert_eq!(status, 200, "cross-origin API call from the page to {node}");
    let states = grace.run("return window.testStates;", vec![]).await;
    assert!(
        states
            .as_array()
            .is_some_and(|states| states.iter().any(|state| state == "reconnecting")),
        "the tab should have said it was reconnecting: {states}"
    );
    grace
        .wait_until(
            "the cluster panel to show n2 down",
            "return document.querySelector('#cluster-nodes li[data-node=n2]')?.dataset.state === 'down';",
            vec![],
        )
        .await;

    grace.post("After: two, on another node").await;
    ada.post("After: one").await;
    // Per sender, the order is kept; across senders the room decides. Compare sets of texts
    // and require the exact same sequence in both tabs.
    let deadline = Instant::now() + WAIT;
    let (seen_by_ada, seen_by_grace) = loop {
        let by_ada = ada.rendered().await;
        let by_grace = grace.rendered().await;
        if by_ada.len() == 6 && by_ada == by_grace {
            break (by_ada, by_grace);
        }
        assert!(
            Instant::now() < deadline,
            "tabs disagree or miss messages:\nAda:   {by_ada:?}\nGrace: {by_grace:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    let seqs: Vec<u64> = seen_by_grace.iter().map(|(seq, _)| *seq).collect();
    assert_gapless(&seqs, "Grace");
    let mut texts: Vec<&str> = seen_by_ada.iter().map(|(_, text)| text.as_str()).collect();
    let position = |text: &str| texts.iter().position(|shown| *shown == text);
    assert!(position("During: typed as n2 died") < position("After: two, on another node"));
    assert!(position("During: from n1") < position("After: one"));
    texts.sort_unstable();
    assert_eq!(
        texts,
        [
            "After: one",
            "After: two, on another node",
            "Before: one",
            "Before: two",
            "During: from n1",
            "During: typed as n2 died",
        ]
    );
    grace.screenshot("chat-after-failover.png").await;
    ada.close().await;
    grace.close().await;
}

#[tokio::test]
async fn html_in_a_message_is_shown_as_text() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let driver = Chromedriver::start().await;
    let (ada, grace, _room) = two_people_in_a_room(&driver, &cluster).await;
    let attack = "<img src=x onerror=alert(1)>";
    ada.post(attack).await;
    for browser in [&ada, &grace] {
        let seqs = browser.wait_for_messages(&[attack]).await;
        assert_eq!(seqs, [1]);
        let images = browser
            .run(
                "return document.querySelectorAll('#messages img:not(.avatar img)').length;",
                vec![],
            )
            .await;
        assert_eq!(images, 0, "the message must not become an element");
        assert!(
            browser.client.get_alert_text().await.is_err(),
            "no script may run"
        );
    }
    ada.close().await;
    grace.close().await;
}

#[tokio::test]
async fn older_messages_load_when_scrolling_up() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let driver = Chromedriver::start().await;

    // A bot fills a room on n2 before anyone opens it.
    const MESSAGES: u64 = 120;
    let token = test_token_named("build-bot", Some("Build bot"));
    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/rooms", cluster.http_url("n2")))
        .bearer_auth(&token)
        .json(&json!({ "name": "Build log" }))
        .send()
        .await
        .expect("create room")
        .json()
        .await
        .expect("room");
    let room = created["room"]["id"].as_str().expect("room id").to_string();
    let mut bot = ChatClient::connect(&cluster.http_url("n2"), &token)
        .await
        .expect("bot connects");
    bot.join_and_wait(&room, None).await.expect("bot joins");
    for number in 1..=MESSAGES {
        bot.post(
            &room,
            &format!("b{number}"),
            &format!("Build #{number} passed"),
        )
        .await
        .expect("post");
        let (ack, _) = bot.until("ack", WAIT).await.expect("ack");
        assert_eq!(ack["seq"], number);
    }
    bot.close().await;

    let ada = sign_up(&driver, &cluster, "n1", "Ada Lovelace", "ada@example.com").await;
    join_room(&ada, &room).await;
    // The newest page first, then older pages as the list is scrolled to its top.
    let deadline = Instant::now() + WAIT;
    let shown = loop {
        let shown = ada.rendered().await;
        if shown.len() as u64 == MESSAGES {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MESSAGES} messages after scrolling up",
            shown.len()
        );
        ada.run(
            "document.querySelector('.messages-scroll').scrollTop = 0;",
            vec![],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seqs: Vec<u64> = shown.iter().map(|(seq, _)| *seq).collect();
    assert_gapless(&seqs, "Ada");
    assert_eq!(shown[0].1, "Build #1 passed");
    let more = ada
        .run(
            "return document.getElementById('load-older').hidden;",
            vec![],
        )
        .await;
    assert_eq!(more, true, "nothing older than #1 is offered");
    ada.close().await;
}
