//! The REST API and CDN over the wire: what a Discord client sends and what it must get.

mod common;

use common::{Client, id_of, send, server_with};
use fake_discord::permissions::{self, MANAGE_CHANNELS, MANAGE_MESSAGES};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn deserializes<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} does not take {value}: {e}", std::any::type_name::<T>()))
}

fn assert_error(answer: &common::Answer, status: u16, code: u64) {
    assert_eq!(
        answer.status,
        status,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["code"], code, "{}", answer.json());
}

#[test]
fn a_missing_or_wrong_token_gets_401() {
    let (server, client, _) = server_with(|_| {});
    let answer = send(server.addr(), "GET", "/api/v10/users/@me", &[], b"").unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.json(),
        json!({"message": "401: Unauthorized", "code": 0})
    );
    let wrong = Client {
        token: "nope".to_owned(),
        ..Client::of(&server)
    };
    assert_eq!(wrong.get("/users/@me").status, 401);
    assert!(
        wrong
            .get("/users/@me")
            .header("x-ratelimit-limit")
            .is_none()
    );
    let me = client.get("/users/@me");
    assert_eq!(me.status, 200);
    let user: twilight_model::user::CurrentUser = deserializes(&me.json());
    assert!(user.bot);
    assert_eq!(user.id.get(), server.bot_user_id());
    assert_eq!(server.stats().unauthorized, 3);
}

#[test]
fn every_object_deserializes_into_twilight_models() {
    let (server, client, channel) = server_with(|c| c.members_intent = true);
    let guild_path = format!("/guilds/{}", server.guild_id());
    let guild: twilight_model::guild::Guild = deserializes(&client.get(&guild_path).json());
    assert_eq!(guild.premium_tier, twilight_model::guild::PremiumTier::None);
    assert_eq!(guild.roles.len(), 2);
    assert_ne!(guild.owner_id.get(), server.bot_user_id());
    let everyone = guild
        .roles
        .iter()
        .find(|r| r.id.get() == server.guild_id())
        .unwrap();
    assert!(
        everyone
            .permissions
            .contains(twilight_model::guild::Permissions::VIEW_CHANNEL)
    );
    let _: Vec<twilight_model::guild::Role> =
        deserializes(&client.get(&format!("{guild_path}/roles")).json());
    let _: Vec<twilight_model::channel::Channel> =
        deserializes(&client.get(&format!("{guild_path}/channels")).json());
    let _: Vec<twilight_model::guild::Member> =
        deserializes(&client.get(&format!("{guild_path}/members?limit=10")).json());
    let bot: twilight_model::guild::Member = deserializes(
        &client
            .get(&format!("{guild_path}/members/{}", server.bot_user_id()))
            .json(),
    );
    assert!(
        bot.roles
            .iter()
            .any(|r| guild.roles.iter().any(|g| g.id == *r && g.managed))
    );

    let posted = client.post_files(channel, &json!({"content": "x"}), &[("a.bin", b"abc")]);
    let message: twilight_model::channel::Message = deserializes(&posted.json());
    assert!(message.author.bot);
    assert_eq!(message.attachments[0].size, 3);
    let foreign =
        server.post_foreign_message(channel, 77, "hi", vec![("f.txt".into(), b"f".to_vec())]);
    let pin = client.call(
        "PUT",
        &format!("/channels/{channel}/pins/{}", message.id),
        None,
    );
    assert_eq!(pin.status, 204);
    let history = client.get(&format!("/channels/{channel}/messages"));
    let messages: Vec<twilight_model::channel::Message> = deserializes(&history.json());
    assert_eq!(messages.len(), 3, "message, foreign message and pin notice");
    assert!(
        messages
            .iter()
            .any(|m| m.id.get() == foreign && !m.author.bot)
    );
    assert!(
        messages
            .iter()
            .any(|m| m.kind == twilight_model::channel::message::MessageType::ChannelMessagePinned)
    );
    let pins: twilight_model::channel::message::PinsListing = deserializes(
        &client
            .get(&format!("/channels/{channel}/messages/pins"))
            .json(),
    );
    assert_eq!(pins.items[0].message.id, message.id);
    let channel_object: twilight_model::channel::Channel =
        deserializes(&client.get(&format!("/channels/{channel}")).json());
    assert!(channel_object.last_pin_timestamp.is_some());
}

#[test]
fn channels_are_created_with_discords_name_rewriting() {
    let (server, client, _) = server_with(|_| {});
    let path = format!("/guilds/{}/channels", server.guild_id());
    let category = client.post(&path, &json!({"name": "Storage Stuff", "type": 4}));
    assert_eq!(category.status, 201);
    assert_eq!(category.json()["name"], "Storage Stuff");
    let created = client.post(
        &path,
        &json!({"name": "  My Great  Folder!! ", "type": 0, "topic": "My Great Folder!!",
                "parent_id": category.json()["id"]}),
    );
    assert_eq!(created.status, 201, "{}", created.json());
    let created = created.json();
    assert_eq!(created["name"], "my-great-folder");
    assert_eq!(created["topic"], "My Great Folder!!");
    assert_eq!(created["parent_id"], category.json()["id"]);
    assert_eq!(server.channel_id("my-great-folder"), Some(id_of(&created)));
    let listed = client.get(&path).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == created["id"])
    );

    assert_error(&client.post(&path, &json!({"name": "!!!"})), 400, 50035);
    assert_error(
        &client.post(&path, &json!({"name": "x".repeat(101)})),
        400,
        50035,
    );
    assert_error(
        &client.post(&path, &json!({"name": "t", "topic": "x".repeat(1025)})),
        400,
        50035,
    );
    assert_error(
        &client.post("/guilds/1/channels", &json!({"name": "a"})),
        404,
        10004,
    );

    let id = id_of(&created);
    let renamed = client.call(
        "PATCH",
        &format!("/channels/{id}"),
        Some(&json!({"name": "New Name", "topic": null})),
    );
    assert_eq!(renamed.json()["name"], "new-name");
    assert_eq!(renamed.json()["topic"], Value::Null);
    let deleted = client.call("DELETE", &format!("/channels/{id}"), None);
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["id"], created["id"]);
    assert_error(&client.get(&format!("/channels/{id}")), 404, 10003);
    assert_eq!(server.stats().channels_created, 2);
}

#[test]
fn managing_channels_needs_manage_channels() {
    let (server, client, channel) =
        server_with(|c| c.bot_permissions = permissions::DEFAULT_BOT & !MANAGE_CHANNELS);
    let path = format!("/guilds/{}/channels", server.guild_id());
    assert_error(&client.post(&path, &json!({"name": "new"})), 403, 50013);
    assert_error(
        &client.call("DELETE", &format!("/channels/{channel}"), None),
        403,
        50013,
    );
    server.set_knobs(|k| k.bot_permissions = permissions::ADMINISTRATOR);
    assert_eq!(client.post(&path, &json!({"name": "new"})).status, 201);
}

#[test]
fn three_files_go_up_and_come_back_through_their_urls() {
    let (_server, client, channel) = server_with(|_| {});
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("chunk-{i}.bin"),
                (0..1000 * (i + 1)).map(|b| (b * 7 + i) as u8).collect(),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let posted = client.post_files(channel, &json!({"content": "three"}), &refs);
    assert_eq!(
        posted.status,
        200,
        "{}",
        String::from_utf8_lossy(&posted.body)
    );
    assert!(posted.header("x-ratelimit-bucket").is_some());
    let id = id_of(&posted.json());
    let fetched = client
        .get(&format!("/channels/{channel}/messages/{id}"))
        .json();
    let attachments = fetched["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 3);
    for (attachment, (name, data)) in attachments.iter().zip(&files) {
        assert_eq!(attachment["filename"], name.as_str());
        assert_eq!(attachment["size"], data.len());
        let url = attachment["url"].as_str().unwrap();
        assert!(
            url.contains("?ex=") && url.contains("&is=") && url.contains("&hm="),
            "{url}"
        );
        let download = client.download(url);
        assert_eq!(download.status, 200);
        assert_eq!(&download.body, data);
        let tampered = url.replace("&hm=", "&hm=0");
        assert_eq!(client.download(&tampered).status, 404);
    }
    let ranged = send(
        client.addr,
        "GET",
        &attachments[2]["url"].as_str().unwrap()[client.addr.to_string().len() + 7..],
        &[("Range", "bytes=10-19".to_owned())],
        b"",
    )
    .unwrap();
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, files[2].1[10..20]);
}

#[test]
fn ranges_are_answered_206_or_416_unless_the_cdn_ignores_them() {
    let (server, client, channel) = server_with(|_| {});
    let data: Vec<u8> = (0..5000u32).map(|b| (b * 13) as u8).collect();
    let posted = client.post_files(channel, &json!({"content": "r"}), &[("c0", &data)]);
    assert_eq!(posted.status, 200);
    let url = posted.json()["attachments"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = &url[client.addr.to_string().len() + 7..];
    let ranged = |range: &str| {
        send(
            client.addr,
            "GET",
            path,
            &[("Range", range.to_owned())],
            b"",
        )
        .unwrap()
    };
    let partial = ranged("bytes=4990-4999");
    assert_eq!(partial.status, 206);
    assert_eq!(
        partial.header("content-range"),
        Some("bytes 4990-4999/5000")
    );
    assert_eq!(partial.body, data[4990..]);
    let past_the_end = ranged("bytes=5000-5009");
    assert_eq!(past_the_end.status, 416);
    assert_eq!(past_the_end.header("content-range"), Some("bytes */5000"));

    let changed = send(
        server.addr(),
        "POST",
        "/_fake/knobs",
        &[],
        br#"{"ignore_range": true}"#,
    )
    .unwrap();
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["ignore_range"], true);
    for range in ["bytes=10-19", "bytes=5000-5009"] {
        let whole = ranged(range);
        assert_eq!(whole.status, 200, "{range}");
        assert_eq!(whole.header("content-range"), None);
        assert_eq!(whole.header("accept-ranges"), Some("none"));
        assert_eq!(whole.body, data);
    }
    assert_eq!(client.download(&url).body, data);
    let stats = server.stats();
    assert_eq!(stats.range_requests, 4);
    assert_eq!(stats.cdn_requests, 5);
    assert_eq!(stats.bytes_downloaded, 10 + 3 * 5000);
}

#[test]
fn too_large_uploads_get_413_and_store_nothing() {
    let (server, client, channel) = server_with(|c| {
        c.max_file_size = 1000;
        c.max_request_size = 2500;
    });
    let payload = json!({"content": ""});
    let big = vec![1u8; 1001];
    let answer = client.post_files(channel, &payload, &[("a", &big)]);
    assert_error(&answer, 413, 40005);
    assert_eq!(answer.json()["message"], "Request entity too large");
    let nine_hundred = vec![2u8; 900];
    let three = [
        ("a", &nine_hundred[..]),
        ("b", &nine_hundred[..]),
        ("c", &nine_hundred[..]),
    ];
    assert_error(&client.post_files(channel, &payload, &three), 413, 40005);
    assert_eq!(server.message_count(channel), 0);
    assert_eq!(
        client
            .post_files(channel, &payload, &[("a", &big[..1000])])
            .status,
        200
    );

    server.set_knobs(|k| k.max_file_size = 3000);
    let single = vec![3u8; 2800];
    assert_eq!(
        client
            .post_files(channel, &payload, &[("a", &single)])
            .status,
        200
    );
    let two = [("a", &single[..1300]), ("b", &single[..1300])];
    assert_error(&client.post_files(channel, &payload, &two), 413, 40005);
    assert_eq!(server.message_count(channel), 2);
    assert_eq!(server.stats().too_large, 3);
}

#[test]
fn a_message_holds_at_most_ten_attachments_and_something() {
    let (server, client, channel) = server_with(|c| c.rate_limits = false);
    let data = [7u8; 10];
    let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let eleven: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
    assert_error(&client.post_files(channel, &json!({}), &eleven), 400, 50035);
    assert_eq!(
        client.post_files(channel, &json!({}), &eleven[..10]).status,
        200
    );
    let path = format!("/channels/{channel}/messages");
    assert_error(&client.post(&path, &json!({"content": ""})), 400, 50006);
    assert_error(
        &client.post(&path, &json!({"content": "x".repeat(2001)})),
        400,
        50035,
    );
    assert_eq!(
        client
            .post(&path, &json!({"content": "é".repeat(2000)}))
            .status,
        200
    );
    assert_error(
        &client.post("/channels/1/messages", &json!({"content": "x"})),
        404,
        10003,
    );
    let invalid = send(
        client.addr,
        "POST",
        &format!("/api/v10{path}"),
        &[
            ("Authorization", format!("Bot {}", client.token)),
            ("Content-Type", "application/json".into()),
        ],
        b"{not json",
    )
    .unwrap();
    assert_error(&invalid, 400, 50109);
    assert_eq!(server.message_count(channel), 2);
}

#[test]
fn history_pages_newest_first_with_before_after_and_limit() {
    let (_server, client, channel) = server_with(|c| c.rate_limits = false);
    let path = format!("/channels/{channel}/messages");
    let ids: Vec<u64> = (0..7)
        .map(|i| {
            id_of(
                &client
                    .post(&path, &json!({"content": format!("m{i}")}))
                    .json(),
            )
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let page = |query: &str| -> Vec<u64> {
        let answer = client.get(&format!("{path}?{query}"));
        assert_eq!(answer.status, 200);
        answer
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect()
    };
    assert_eq!(page("limit=3"), vec![ids[6], ids[5], ids[4]]);
    assert_eq!(
        page(&format!("limit=3&before={}", ids[4])),
        vec![ids[3], ids[2], ids[1]]
    );
    assert_eq!(
        page(&format!("limit=2&after={}", ids[0])),
        vec![ids[2], ids[1]]
    );
    assert_eq!(page(&format!("after={}", ids[4])), vec![ids[6], ids[5]]);
    assert_eq!(page("").len(), 7);
    assert_error(&client.get(&format!("{path}?limit=0")), 400, 50035);
    assert_error(&client.get(&format!("{path}?limit=101")), 400, 50035);
    // An id no message has: a minute after the newest (ids[0] + 1 can be the next message
    // when two are posted within one millisecond).
    let unused = ids.iter().max().unwrap() + (60_000 << 22);
    assert_error(&client.get(&format!("{path}/{unused}")), 404, 10008);
}

#[test]
fn enforce_nonce_returns_the_same_message() {
    let (server, client, channel) = server_with(|_| {});
    let payload = json!({"content": "record", "nonce": "upload-1", "enforce_nonce": true});
    let first = client.post_files(channel, &payload, &[("a.bin", b"data")]);
    let again = client.post_files(channel, &payload, &[("a.bin", b"data")]);
    assert_eq!(first.status, 200);
    assert_eq!(again.status, 200);
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(first.json()["nonce"], "upload-1");
    assert_eq!(server.message_count(channel), 1);
    let path = format!("/channels/{channel}/messages");
    let numeric = json!({"content": "n", "nonce": 12345, "enforce_nonce": true});
    assert_eq!(
        client.post(&path, &numeric).json()["id"],
        client.post(&path, &numeric).json()["id"]
    );
    let without = json!({"content": "record", "nonce": "upload-1"});
    assert_ne!(
        client.post(&path, &without).json()["id"],
        first.json()["id"]
    );
    assert_eq!(server.message_count(channel), 3);
    assert_eq!(server.stats().messages_created, 3);
}

#[test]
fn urls_expire_and_fresh_ones_come_with_the_message_or_refresh() {
    let (server, client, channel) = server_with(|_| {});
    let posted = client
        .post_files(channel, &json!({}), &[("a.bin", b"bytes")])
        .json();
    let url = posted["attachments"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(client.download(&url).status, 200);
    server.expire_all_urls();
    let expired = client.download(&url);
    assert_eq!(expired.status, 404);
    let id = id_of(&posted);
    let fresh = client
        .get(&format!("/channels/{channel}/messages/{id}"))
        .json();
    let fresh_url = fresh["attachments"][0]["url"].as_str().unwrap();
    assert_eq!(client.download(fresh_url).body, b"bytes");

    server.expire_all_urls();
    let refreshed = client.post(
        "/attachments/refresh-urls",
        &json!({"attachment_urls": [url]}),
    );
    assert_eq!(refreshed.status, 200);
    let entry = &refreshed.json()["refreshed_urls"][0];
    assert_eq!(entry["original"], url.as_str());
    assert_eq!(
        client.download(entry["refreshed"].as_str().unwrap()).body,
        b"bytes"
    );
    let too_many: Vec<&str> = vec![url.as_str(); 51];
    assert_error(
        &client.post(
            "/attachments/refresh-urls",
            &json!({"attachment_urls": too_many}),
        ),
        400,
        50035,
    );

    server.set_knobs(|k| k.url_lifetime = Duration::ZERO);
    let short = client
        .get(&format!("/channels/{channel}/messages/{id}"))
        .json();
    let short_url = short["attachments"][0]["url"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(client.download(&short_url).status, 404);

    assert_eq!(
        client
            .call(
                "DELETE",
                &format!("/channels/{channel}/messages/{id}"),
                None
            )
            .status,
        204
    );
    let gone = client.post(
        "/attachments/refresh-urls",
        &json!({"attachment_urls": [url]}),
    );
    assert_eq!(gone.json()["refreshed_urls"], json!([]));
}

#[test]
fn buckets_report_headers_and_refuse_the_sixth_message() {
    let (server, client, channel) = server_with(|c| c.channels.push("other".into()));
    let path = format!("/channels/{channel}/messages");
    let mut bucket = None;
    for remaining in (0..5).rev() {
        let answer = client.post(&path, &json!({"content": "x"}));
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        let reset_after: f64 = answer
            .header("x-ratelimit-reset-after")
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset_after > 0.0 && reset_after <= 5.0);
        let reset: f64 = answer.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset > 1.7e9);
        assert!(answer.header("x-ratelimit-scope").is_none());
        bucket = answer.header("x-ratelimit-bucket").map(str::to_owned);
    }
    let refused = client.post(&path, &json!({"content": "x"}));
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-ratelimit-scope"), Some("user"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("x-ratelimit-bucket"), bucket.as_deref());
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after));
    let body = refused.json();
    assert_eq!(body["message"], "You are being rate limited.");
    assert_eq!(body["global"], false);
    let secs = body["retry_after"].as_f64().unwrap();
    assert!(secs > 0.0 && secs <= 5.0);
    assert_eq!(server.message_count(channel), 5);

    let other = server.channel_id("other").unwrap();
    let elsewhere = client.post(
        &format!("/channels/{other}/messages"),
        &json!({"content": "x"}),
    );
    assert_eq!(elsewhere.status, 200, "buckets count per channel");
    assert_eq!(elsewhere.header("x-ratelimit-bucket"), bucket.as_deref());
    assert_eq!(
        client.get(&path).status,
        200,
        "other routes have their own bucket"
    );
    let stats = server.stats();
    assert_eq!((stats.rate_limited, stats.forced_429), (1, 0));
}

#[test]
fn the_bucket_reopens_after_its_window() {
    let (_server, client, channel) =
        server_with(|c| c.message_create_limit = (2, Duration::from_secs(1)));
    let path = format!("/channels/{channel}/messages");
    let post = || client.post(&path, &json!({"content": "x"})).status;
    assert_eq!((post(), post(), post()), (200, 200, 429));
    std::thread::sleep(Duration::from_millis(1020));
    assert_eq!(post(), 200);
}

#[test]
fn the_global_limit_refuses_with_global_headers() {
    let (server, client, _) = server_with(|c| c.global_limit_per_sec = 5);
    let statuses: Vec<u16> = (0..6).map(|_| client.get("/users/@me").status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    let refused = client.get("/users/@me");
    assert_eq!(refused.header("x-ratelimit-global"), Some("true"));
    assert_eq!(refused.header("x-ratelimit-scope"), Some("global"));
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.json()["global"], true);
    assert_eq!(server.stats().rate_limited, 2);
    assert_eq!(server.stats().global_rate_limited, 2);
}

#[test]
fn forced_429s_look_like_user_limits() {
    let (server, client, _) = server_with(|c| {
        c.forced_429_rate = 0.5;
        c.rate_limits = false;
    });
    let answers: Vec<common::Answer> = (0..60).map(|_| client.get("/users/@me")).collect();
    let forced: Vec<&common::Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!((10..=50).contains(&forced.len()), "{} forced", forced.len());
    for answer in forced {
        assert_eq!(answer.header("x-ratelimit-scope"), Some("user"));
        assert_eq!(answer.header("x-ratelimit-remaining"), Some("0"));
        let reset_after: f64 = answer
            .header("x-ratelimit-reset-after")
            .unwrap()
            .parse()
            .unwrap();
        let retry_after = answer.json()["retry_after"].as_f64().unwrap();
        assert!((0.05..=0.3).contains(&retry_after), "{retry_after}");
        assert!((reset_after - retry_after).abs() < 0.002);
    }
    let stats = server.stats();
    assert_eq!(stats.rate_limited, 0);
    assert!(stats.forced_429 >= 10);
}

#[test]
fn failure_injection_roughly_honours_its_rate() {
    let (server, client, _) = server_with(|c| {
        c.failure_rate = 0.4;
        c.rate_limits = false;
    });
    let auth = [("Authorization", format!("Bot {}", client.token))];
    let (mut dropped, mut errors, mut fine) = (0, 0, 0);
    for _ in 0..250 {
        match send(client.addr, "GET", "/api/v10/users/@me", &auth, b"") {
            Err(_) => dropped += 1,
            Ok(answer) if [500, 502, 503].contains(&answer.status) => {
                assert!(answer.json()["message"].is_string());
                errors += 1;
            }
            Ok(answer) => {
                assert_eq!(answer.status, 200);
                fine += 1;
            }
        }
    }
    assert!(
        (60..=140).contains(&(dropped + errors)),
        "{dropped} dropped, {errors} 5xx, {fine} fine"
    );
    assert!(
        dropped >= 20 && errors >= 20,
        "{dropped} dropped, {errors} 5xx"
    );
    assert_eq!(server.stats().injected_failures, dropped + errors);
}

#[test]
fn members_need_the_intent_but_one_member_does_not() {
    let (server, client, _) = server_with(|_| {});
    let guild = server.guild_id();
    assert_error(&client.get(&format!("/guilds/{guild}/members")), 403, 50001);
    let bot = client.get(&format!("/guilds/{guild}/members/{}", server.bot_user_id()));
    assert_eq!(bot.status, 200);
    assert_error(
        &client.get(&format!("/guilds/{guild}/members/5")),
        404,
        10007,
    );
    server.set_knobs(|k| k.members_intent = true);
    let one = client.get(&format!("/guilds/{guild}/members")).json();
    assert_eq!(one.as_array().unwrap().len(), 1);
    let all = client
        .get(&format!("/guilds/{guild}/members?limit=1000"))
        .json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let after = id_of(&all[0]["user"]);
    let rest = client
        .get(&format!("/guilds/{guild}/members?limit=1000&after={after}"))
        .json();
    assert_eq!(rest.as_array().unwrap().len(), 2);
}

#[test]
fn deleting_messages_singly_in_bulk_and_pins() {
    let (server, client, channel) = server_with(|c| c.rate_limits = false);
    let path = format!("/channels/{channel}/messages");
    let posted: Vec<Value> = (0..4)
        .map(|i| {
            client
                .post_files(channel, &json!({}), &[("a", &[i as u8][..])])
                .json()
        })
        .collect();
    let id = |i: usize| id_of(&posted[i]);
    assert_eq!(
        client
            .call("DELETE", &format!("{path}/{}", id(0)), None)
            .status,
        204
    );
    assert_error(
        &client.call("DELETE", &format!("{path}/{}", id(0)), None),
        404,
        10008,
    );
    assert_eq!(
        client
            .download(posted[0]["attachments"][0]["url"].as_str().unwrap())
            .status,
        404
    );

    let bulk = format!("{path}/bulk-delete");
    assert_error(
        &client.post(&bulk, &json!({"messages": [id(1).to_string()]})),
        400,
        50035,
    );
    let old = (1u64 << 22).to_string();
    assert_error(
        &client.post(&bulk, &json!({"messages": [id(1).to_string(), old]})),
        400,
        50034,
    );
    assert_eq!(
        client
            .post(
                &bulk,
                &json!({"messages": [id(1).to_string(), id(2).to_string()]})
            )
            .status,
        204
    );
    assert_eq!(server.message_count(channel), 1);

    let pin = format!("/channels/{channel}/messages/pins/{}", id(3));
    assert_eq!(client.call("PUT", &pin, None).status, 204);
    let legacy = client.get(&format!("/channels/{channel}/pins")).json();
    assert_eq!(legacy[0]["id"], posted[3]["id"]);
    assert_eq!(legacy[0]["pinned"], true);
    let listing = client
        .get(&format!("/channels/{channel}/messages/pins?limit=1"))
        .json();
    assert_eq!(listing["items"][0]["message"]["id"], posted[3]["id"]);
    assert_eq!(listing["has_more"], false);
    assert_eq!(
        server.message_count(channel),
        2,
        "the pin notice is a message"
    );
    assert_eq!(client.call("DELETE", &pin, None).status, 204);
    assert_eq!(
        client.get(&format!("/channels/{channel}/pins")).json(),
        json!([])
    );

    let foreign = server.post_foreign_message(channel, 99, "not yours", vec![]);
    server.set_knobs(|k| k.bot_permissions &= !MANAGE_MESSAGES);
    assert_error(
        &client.call("DELETE", &format!("{path}/{foreign}"), None),
        403,
        50013,
    );
    assert_eq!(
        client
            .call("DELETE", &format!("{path}/{}", id(3)), None)
            .status,
        204
    );
    assert_eq!(server.stats().messages_deleted, 4);
}

#[test]
fn deleting_a_channel_deletes_its_attachments() {
    let (_server, client, channel) = server_with(|_| {});
    let posted = client
        .post_files(channel, &json!({}), &[("a", b"x")])
        .json();
    let url = posted["attachments"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(
        client
            .call("DELETE", &format!("/channels/{channel}"), None)
            .status,
        200
    );
    assert_eq!(client.download(&url).status, 404);
    assert_error(
        &client.get(&format!("/channels/{channel}/messages")),
        404,
        10003,
    );
}

#[test]
fn latency_and_bandwidth_slow_requests_down() {
    let (server, client, channel) = server_with(|_| {});
    let data = vec![9u8; 100_000];
    let posted = client
        .post_files(channel, &json!({}), &[("big", &data)])
        .json();
    let url = posted["attachments"][0]["url"].as_str().unwrap().to_owned();
    server.set_knobs(|k| {
        k.bandwidth = Some(400_000);
        k.latency = Duration::from_millis(100);
    });
    let started = Instant::now();
    let download = client.download(&url);
    assert_eq!(download.body, data);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(
        client
            .post_files(channel, &json!({}), &[("big", &data)])
            .status,
        200
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn control_endpoints_change_knobs_and_report_stats() {
    let (server, client, _) = server_with(|_| {});
    let changed = send(
        server.addr(),
        "POST",
        "/_fake/knobs",
        &[],
        br#"{"max_file_size": 52428800, "message_create_limit": [3, 1.5]}"#,
    )
    .unwrap();
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["max_file_size"], 52_428_800);
    assert_eq!(
        server.knobs().message_create_limit,
        (3, Duration::from_millis(1500))
    );
    let guild = client.get(&format!("/guilds/{}", server.guild_id())).json();
    assert_eq!(guild["premium_tier"], 2);
    let rejected = send(
        server.addr(),
        "POST",
        "/_fake/knobs",
        &[],
        br#"{"latency": "slow"}"#,
    )
    .unwrap();
    assert_eq!(rejected.status, 400);
    let stats = send(server.addr(), "GET", "/_fake/stats", &[], b"")
        .unwrap()
        .json();
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["per_route"]["GET /guilds/{guild.id}"], 1);
}

#[test]
fn a_control_endpoint_posts_as_someone_else() {
    let (server, client, channel) = server_with(|_| {});
    let body = format!(
        r#"{{"channel": {channel}, "author": 4242, "content": "hi", "attachments": [["a.txt", "text"]]}}"#
    );
    let posted = send(
        server.addr(),
        "POST",
        "/_fake/foreign-message",
        &[],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(posted.status, 200);
    let id = posted.json()["id"].as_str().unwrap().to_string();
    let message = client
        .get(&format!("/channels/{channel}/messages/{id}"))
        .json();
    assert_eq!(message["author"]["id"], "4242");
    assert_eq!(message["attachments"][0]["filename"], "a.txt");
    let nowhere = send(
        server.addr(),
        "POST",
        "/_fake/foreign-message",
        &[],
        br#"{"channel": 1, "author": 4242, "content": "hi"}"#,
    )
    .unwrap();
    assert_eq!(nowhere.status, 400);
}

#[test]
fn unknown_paths_and_methods() {
    let (_server, client, channel) = server_with(|_| {});
    assert_eq!(client.get("/nothing").status, 404);
    assert_eq!(
        client
            .call("PUT", &format!("/channels/{channel}/messages"), None)
            .status,
        405
    );
    assert_error(&client.get("/channels/abc"), 400, 50035);
}

#[test]
fn cdn_failures_answer_5xx_or_break_the_connection() {
    let (server, client, channel) = server_with(|_| {});
    let data = vec![5u8; 200_000];
    let posted = client
        .post_files(channel, &json!({}), &[("a", &data)])
        .json();
    let url = posted["attachments"][0]["url"].as_str().unwrap().to_owned();
    let target = &url[url.find("/attachments/").unwrap()..];
    server.set_knobs(|k| k.failure_rate = 0.5);
    let (mut broken, mut errors, mut fine) = (0, 0, 0);
    for _ in 0..100 {
        match send(client.addr, "GET", target, &[], b"") {
            Err(_) => broken += 1,
            Ok(answer) if answer.status >= 500 => errors += 1,
            Ok(answer) => {
                assert_eq!(answer.body, data);
                fine += 1;
            }
        }
    }
    assert!(
        broken >= 10 && errors >= 10 && fine >= 25,
        "{broken} broken, {errors} 5xx, {fine} fine"
    );
    assert_eq!(server.stats().injected_failures, broken + errors);
}
