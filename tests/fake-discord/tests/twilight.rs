//! The fake server against twilight-http 0.18, the client the Discord store uses: what it
//! sends must be understood, what it gets must parse, and its rate limiter must cope.

mod common;

use fake_discord::{Config, FakeDiscord};
use std::time::{Duration, Instant};
use twilight_http::Client;
use twilight_http::api_error::ApiError;
use twilight_http::error::ErrorType;
use twilight_model::channel::ChannelType;
use twilight_model::http::attachment::Attachment;
use twilight_model::id::Id;

async fn start(change: impl FnOnce(&mut Config)) -> (FakeDiscord, Client) {
    let mut config = Config {
        channels: vec!["files".to_owned()],
        ..Config::default()
    };
    change(&mut config);
    let server = FakeDiscord::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder()
        .token(server.token().to_owned())
        .proxy(server.addr().to_string(), true)
        .timeout(Duration::from_secs(30))
        .build();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_reads_and_writes_everything_it_needs() {
    let (server, client) = start(|_| {}).await;
    let me = client.current_user().await.unwrap().model().await.unwrap();
    assert_eq!(me.id.get(), server.bot_user_id());
    let guild_id = Id::new(server.guild_id());
    let guild = client.guild(guild_id).await.unwrap().model().await.unwrap();
    assert_eq!(guild.roles.len(), 2);
    let created = client
        .create_guild_channel(guild_id, "My Folder")
        .kind(ChannelType::GuildText)
        .topic("My Folder")
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(created.name.as_deref(), Some("my-folder"));
    let channels = client
        .guild_channels(guild_id)
        .await
        .unwrap()
        .models()
        .await
        .unwrap();
    assert_eq!(channels.len(), 2);

    let files = [
        Attachment::from_bytes("c0.bin".to_owned(), vec![1; 5000], 0),
        Attachment::from_bytes("c1.bin".to_owned(), vec![2; 7000], 1),
    ];
    let message = client
        .create_message(created.id)
        .content("record")
        .attachments(&files)
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(message.attachments.len(), 2);
    assert_eq!(message.attachments[1].filename, "c1.bin");
    let url = message.attachments[1].url.clone();
    let addr = server.addr();
    let downloaded = tokio::task::spawn_blocking(move || {
        let target = &url[url.find("/attachments/").unwrap()..];
        common::send(addr, "GET", target, &[], b"").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(downloaded.body, vec![2; 7000]);

    let page = client
        .channel_messages(created.id)
        .limit(10)
        .await
        .unwrap()
        .models()
        .await
        .unwrap();
    assert_eq!(page[0].id, message.id);
    let again = client
        .message(created.id, message.id)
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(again.attachments[0].size, 5000);
    client.create_pin(created.id, message.id).await.unwrap();
    let pins = client
        .pins(created.id)
        .await
        .unwrap()
        .model()
        .await
        .unwrap();
    assert_eq!(pins.items[0].message.id, message.id);
    client.delete_message(created.id, message.id).await.unwrap();
    assert_eq!(
        server.message_count(created.id.get()),
        1,
        "the pin notice stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_waits_out_exhausted_buckets_and_forced_429s() {
    let (server, client) =
        start(|c| c.message_create_limit = (2, Duration::from_millis(400))).await;
    let channel = Id::new(server.channel_id("files").unwrap());
    let started = Instant::now();
    for i in 0..5 {
        client
            .create_message(channel)
            .content(&format!("m{i}"))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    let stats = server.stats();
    assert_eq!(stats.messages_created, 5);
    assert!(stats.rate_limited >= 1);

    server.set_knobs(|k| k.forced_429_rate = 0.5);
    for _ in 0..100 {
        client.current_user().await.unwrap().model().await.unwrap();
        if server.stats().forced_429 >= 2 {
            return;
        }
    }
    panic!("no forced 429 in 100 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_sees_413_with_code_40005() {
    let (server, client) = start(|c| c.max_file_size = 100).await;
    let channel = Id::new(server.channel_id("files").unwrap());
    let files = [Attachment::from_bytes(
        "big.bin".to_owned(),
        vec![0; 101],
        0,
    )];
    let error = client
        .create_message(channel)
        .attachments(&files)
        .await
        .unwrap_err();
    match error.kind() {
        ErrorType::Response {
            status,
            error: ApiError::General(general),
            ..
        } => {
            assert_eq!(status.get(), 413);
            assert_eq!(general.code, 40005);
        }
        other => panic!("unexpected error {other:?}"),
    }
}
