//! A fake Telegram Bot API for tests: teloxide talks to it through its API URL. Tests push
//! updates (messages, stickers, edits, button presses) into the queue `getUpdates` serves
//! with long polling, and read back everything the bot sent: texts, photos (the PNG bytes),
//! edits, callback answers and the registered command menus. It can answer the next calls
//! of a method with 429 `retry_after`, or every message to one chat for a while, as
//! Telegram's flood control does. With a webhook set (`setWebhook`), `getUpdates` answers
//! 409 as Telegram does, and the test delivers the pending updates itself
//! ([`FakeTelegram::take_pending`]), playing Telegram and the load balancer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use url::Url;

/// The token the fake accepts; any other is answered 401, as Telegram does.
pub const TOKEN: &str = "123456789:AAFakeTokenForTestsOnly-keyledger";
/// The bot's own user id in the fake.
pub const BOT_USER_ID: i64 = 99;

/// How long [`FakeTelegram::wait_for`] waits before failing the test.
pub const DEADLINE: Duration = Duration::from_secs(45);

/// A Telegram user talking to the bot.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: i64,
    pub first_name: String,
    pub language_code: Option<String>,
}

impl TestUser {
    pub fn new(id: i64, first_name: &str, language_code: Option<&str>) -> Self {
        Self {
            id,
            first_name: first_name.to_owned(),
            language_code: language_code.map(str::to_owned),
        }
    }

    fn json(&self) -> Value {
        let mut user = json!({"id": self.id, "is_bot": false, "first_name": self.first_name});
        if let Some(code) = &self.language_code {
            user["language_code"] = json!(code);
        }
        user
    }
}

/// One call the bot made that changes what a user sees.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Order of arrival among everything recorded.
    pub seq: usize,
    /// `sendMessage`, `sendPhoto`, `editMessageText` or `answerCallbackQuery`.
    pub method: String,
    pub chat_id: i64,
    /// The message sent or edited (0 for a callback answer).
    pub message_id: i32,
    /// The text, the photo's caption, or the callback answer's text.
    pub text: String,
    pub parse_mode: Option<String>,
    /// Inline buttons: (label, callback data); the data is empty for a URL button.
    pub buttons: Vec<Vec<(String, String)>>,
    /// The inline buttons that open a page: (label, URL), in the order shown.
    pub url_buttons: Vec<(String, String)>,
    pub photo: Option<Vec<u8>>,
    pub at: Instant,
}

impl Sent {
    /// The callback data of the first button whose label contains `label`.
    pub fn button(&self, label: &str) -> Option<&str> {
        self.buttons
            .iter()
            .flatten()
            .find(|(text, _)| text.contains(label))
            .map(|(_, data)| data.as_str())
    }

    /// The URL of the first URL button whose label contains `label`.
    pub fn url_button(&self, label: &str) -> Option<&str> {
        self.url_buttons
            .iter()
            .find(|(text, _)| text.contains(label))
            .map(|(_, url)| url.as_str())
    }

    /// The `vless://` link inside `<code>…</code>`, unescaped.
    pub fn link(&self) -> Option<String> {
        let start = self.text.find("<code>vless://")? + "<code>".len();
        let end = start + self.text[start..].find("</code>")?;
        Some(self.text[start..end].replace("&amp;", "&"))
    }
}

/// A command menu registered with `setMyCommands`: its language (`None`: the default)
/// and its (command, description) pairs.
pub type CommandMenu = (Option<String>, Vec<(String, String)>);

/// A call answered with 429.
#[derive(Debug, Clone)]
pub struct RateLimited {
    pub method: String,
    /// The chat refused, for a chat's own limit (`None` for a method's).
    pub chat_id: Option<i64>,
    pub at: Instant,
    pub retry_after: u32,
}

#[derive(Default)]
struct Inner {
    next_update: i64,
    next_message: i32,
    /// Updates not yet confirmed by an offset past them.
    pending: VecDeque<Value>,
    /// Every update ever pushed, by id, to deliver one again.
    pushed: HashMap<i64, Value>,
    /// Updates delivered again whatever the offset says, once.
    redelivered: VecDeque<Value>,
    /// The `getUpdates` call that last served redelivered updates.
    redelivered_at_call: Option<usize>,
    sent: Vec<Sent>,
    seq: usize,
    /// Chat of each callback query id, to attribute answers.
    callback_chats: HashMap<String, i64>,
    commands: Vec<CommandMenu>,
    limits: HashMap<String, VecDeque<u32>>,
    /// Chats whose messages are refused with 429 until the instant given.
    chat_limits: HashMap<i64, Instant>,
    rate_limited: Vec<RateLimited>,
    /// The webhook set with `setWebhook`: its URL and secret token.
    webhook: Option<(String, String)>,
    unauthorized: usize,
    get_updates_calls: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The fake Bot API server; stops when dropped.
pub struct FakeTelegram {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn private_chat(id: i64, first_name: &str) -> Value {
    json!({"id": id, "type": "private", "first_name": first_name})
}

fn bot_message(message_id: i32, chat_id: i64, text: &str) -> Value {
    json!({
        "message_id": message_id,
        "date": now_unix(),
        "chat": private_chat(chat_id, "User"),
        "from": {"id": BOT_USER_ID, "is_bot": true, "first_name": "keyledger", "username": "keyledger_bot"},
        "text": text,
    })
}

impl FakeTelegram {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                next_update: 1000,
                next_message: 1,
                ..Inner::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .route("/{bot}/{method}", post(call))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The base URL to give the bot (`TELEGRAM_API_URL`).
    pub fn api_url(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).unwrap_or_else(|_| unreachable!())
    }

    pub fn token(&self) -> &'static str {
        TOKEN
    }

    fn push(&self, make: impl FnOnce(i64, &mut Inner) -> Value) -> i64 {
        let mut inner = self.shared.lock();
        inner.next_update += 1;
        let id = inner.next_update;
        let mut update = make(id, &mut inner);
        update["update_id"] = json!(id);
        inner.pushed.insert(id, update.clone());
        inner.pending.push_back(update);
        drop(inner);
        self.shared.changed.notify_waiters();
        id
    }

    fn user_message(user: &TestUser, inner: &mut Inner, content: Map<String, Value>) -> Value {
        inner.next_message += 1;
        let mut message = json!({
            "message_id": inner.next_message,
            "date": now_unix(),
            "chat": private_chat(user.id, &user.first_name),
            "from": user.json(),
        });
        for (k, v) in content {
            message[k] = v;
        }
        message
    }

    /// The user sends `text` (a command if it starts with `/`); returns the update id.
    pub fn send_text(&self, user: &TestUser, text: &str) -> i64 {
        let mut content = Map::new();
        content.insert("text".into(), json!(text));
        if text.starts_with('/') {
            let length = text
                .split_whitespace()
                .next()
                .map(|w| w.encode_utf16().count());
            content.insert(
                "entities".into(),
                json!([{"type": "bot_command", "offset": 0, "length": length.unwrap_or(1)}]),
            );
        }
        self.push(|_, inner| json!({"message": Self::user_message(user, inner, content)}))
    }

    /// The user sends a sticker.
    pub fn send_sticker(&self, user: &TestUser) -> i64 {
        let mut content = Map::new();
        content.insert(
            "sticker".into(),
            json!({"file_id": "sticker-file", "file_unique_id": "sticker-unique", "type": "regular",
                   "width": 512, "height": 512, "is_animated": false, "is_video": false}),
        );
        self.push(|_, inner| json!({"message": Self::user_message(user, inner, content)}))
    }

    /// The user edits an earlier message to `text`.
    pub fn edit_text(&self, user: &TestUser, text: &str) -> i64 {
        let mut content = Map::new();
        content.insert("text".into(), json!(text));
        content.insert("edit_date".into(), json!(now_unix()));
        self.push(|_, inner| json!({"edited_message": Self::user_message(user, inner, content)}))
    }

    /// `user` presses a button with `data` under message `message_id` of chat `chat_id`.
    pub fn press_in(&self, user: &TestUser, chat_id: i64, message_id: i32, data: &str) -> i64 {
        self.push(|id, inner| {
            let query_id = format!("cq{id}");
            inner.callback_chats.insert(query_id.clone(), chat_id);
            json!({"callback_query": {
                "id": query_id,
                "from": user.json(),
                "chat_instance": format!("ci{chat_id}"),
                "data": data,
                "message": bot_message(message_id, chat_id, "…"),
            }})
        })
    }

    /// `user` presses, in their own chat, the button with `data` under `message`.
    pub fn press(&self, user: &TestUser, message: &Sent, data: &str) -> i64 {
        self.press_in(user, user.id, message.message_id, data)
    }

    /// Delivers update `update_id` again, as Telegram does when the bot's confirmation
    /// (the next offset) did not reach it.
    pub fn redeliver(&self, update_id: i64) {
        let mut inner = self.shared.lock();
        let Some(update) = inner.pushed.get(&update_id).cloned() else {
            panic!("update {update_id} was never pushed");
        };
        inner.redelivered.push_back(update);
        drop(inner);
        self.shared.changed.notify_waiters();
    }

    /// Waits until the redelivered updates were served and the bot came back for more,
    /// which it does after handling them.
    pub async fn wait_redelivered(&self) {
        let until = Instant::now() + DEADLINE;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.shared.lock();
                let served = inner.redelivered.is_empty()
                    && inner
                        .redelivered_at_call
                        .is_some_and(|call| inner.get_updates_calls > call);
                if served {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "redelivered updates were never handled"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.lock().sent.clone()
    }

    /// Everything sent to `chat_id` after position `after` (a `seq`).
    pub fn sent_to(&self, chat_id: i64, after: usize) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| s.chat_id == chat_id && s.seq >= after)
            .collect()
    }

    /// The `seq` the next recorded call will get: a mark to look after.
    pub fn mark(&self) -> usize {
        self.shared.lock().seq
    }

    /// Waits until a call at or after `after` matches `check`, failing the test after
    /// [`DEADLINE`].
    pub async fn wait_for(&self, what: &str, after: usize, check: impl Fn(&Sent) -> bool) -> Sent {
        let until = Instant::now() + DEADLINE;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.sent().into_iter().find(|s| s.seq >= after && check(s)) {
                return found;
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for: {what}; sent: {:#?}",
                self.sent()
                    .iter()
                    .map(|s| (&s.method, s.chat_id, &s.text))
                    .collect::<Vec<_>>()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Waits until every pushed update was confirmed by the bot (asked for with an offset
    /// past it), which it does after handling it.
    pub async fn wait_handled(&self, update_id: i64) {
        let until = Instant::now() + DEADLINE;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pending = self
                .shared
                .lock()
                .pending
                .iter()
                .any(|u| u["update_id"].as_i64() <= Some(update_id));
            if !pending {
                return;
            }
            assert!(
                Instant::now() < until,
                "update {update_id} was never confirmed"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Answers the next `times` calls of `method` with 429 and `retry_after` seconds.
    pub fn rate_limit(&self, method: &str, times: usize, retry_after: u32) {
        let mut inner = self.shared.lock();
        let queue = inner.limits.entry(method.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(retry_after, times));
    }

    /// Refuses every message to `chat_id` with 429 for `duration`, telling the seconds left.
    pub fn rate_limit_chat(&self, chat_id: i64, duration: Duration) {
        self.shared
            .lock()
            .chat_limits
            .insert(chat_id, Instant::now() + duration);
    }

    /// The webhook the bot set: its URL and secret token.
    pub fn webhook(&self) -> Option<(String, String)> {
        self.shared.lock().webhook.clone()
    }

    /// Waits until the bot sets a webhook; its URL and secret token.
    pub async fn wait_webhook(&self) -> (String, String) {
        let until = Instant::now() + DEADLINE;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(webhook) = self.webhook() {
                return webhook;
            }
            assert!(Instant::now() < until, "the bot never set a webhook");
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    /// Takes every update not yet delivered, oldest first, to deliver them to a webhook.
    pub fn take_pending(&self) -> Vec<Value> {
        self.shared.lock().pending.drain(..).collect()
    }

    pub fn rate_limited(&self) -> Vec<RateLimited> {
        self.shared.lock().rate_limited.clone()
    }

    /// The command menus registered: language (`None` = default) and (command, description).
    pub fn commands(&self) -> Vec<CommandMenu> {
        self.shared.lock().commands.clone()
    }

    /// Calls made with a wrong token.
    pub fn unauthorized(&self) -> usize {
        self.shared.lock().unauthorized
    }

    pub fn get_updates_calls(&self) -> usize {
        self.shared.lock().get_updates_calls
    }
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn error(status: StatusCode, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    (status, axum::Json(body)).into_response()
}

/// A request's fields, from a JSON body or a multipart form (files kept as bytes).
async fn fields(request: Request) -> Result<(Map<String, Value>, Option<Vec<u8>>), String> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| e.to_string())?;
        if body.is_empty() {
            return Ok((Map::new(), None));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        return match value {
            Value::Object(map) => Ok((map, None)),
            _ => Err("body is not a JSON object".into()),
        };
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| e.to_string())?;
    let mut map = Map::new();
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_owned();
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(|e| e.to_string())?;
        if is_file {
            file = Some(bytes.to_vec());
            map.insert(name, json!("<file>"));
        } else {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            // Multipart carries every value as text; JSON ones (reply_markup, numbers) are
            // read back as JSON.
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            map.insert(name, value);
        }
    }
    Ok((map, file))
}

/// The inline keyboard of a request, as JSON (multipart sends it as a string).
fn markup_of(fields: &Map<String, Value>) -> Value {
    match fields.get("reply_markup") {
        Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

fn url_buttons_of(fields: &Map<String, Value>) -> Vec<(String, String)> {
    let markup = markup_of(fields);
    let Some(rows) = markup["inline_keyboard"].as_array() else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|b| {
            let url = b["url"].as_str()?;
            Some((
                b["text"].as_str().unwrap_or_default().to_owned(),
                url.to_owned(),
            ))
        })
        .collect()
}

fn buttons_of(fields: &Map<String, Value>) -> Vec<Vec<(String, String)>> {
    let markup = markup_of(fields);
    markup["inline_keyboard"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    row.as_array()
                        .map(|buttons| {
                            buttons
                                .iter()
                                .map(|b| {
                                    (
                                        b["text"].as_str().unwrap_or_default().to_owned(),
                                        b["callback_data"].as_str().unwrap_or_default().to_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn as_i64(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn call(
    State(shared): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    if bot != format!("bot{TOKEN}") {
        shared.lock().unauthorized += 1;
        return error(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    let (fields, file) = match fields(request).await {
        Ok(parsed) => parsed,
        Err(reason) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("Bad Request: {reason}"),
                None,
            );
        }
    };
    // Telegram reads method names case-insensitively (teloxide sends `SendMessage`).
    let method = match method.to_ascii_lowercase().as_str() {
        "getupdates" => "getUpdates",
        "getme" => "getMe",
        "setmycommands" => "setMyCommands",
        "sendmessage" => "sendMessage",
        "sendphoto" => "sendPhoto",
        "editmessagetext" => "editMessageText",
        "answercallbackquery" => "answerCallbackQuery",
        "setwebhook" => "setWebhook",
        "deletewebhook" => "deleteWebhook",
        _ => return error(StatusCode::NOT_FOUND, "Not Found: method not found", None),
    };
    {
        let mut inner = shared.lock();
        if let Some(retry_after) = inner.limits.get_mut(method).and_then(VecDeque::pop_front) {
            inner.rate_limited.push(RateLimited {
                method: method.to_owned(),
                chat_id: None,
                at: Instant::now(),
                retry_after,
            });
            drop(inner);
            shared.changed.notify_waiters();
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too Many Requests: retry after {retry_after}"),
                Some(json!({"retry_after": retry_after})),
            );
        }
    }
    if let Some(limited) = chat_limited(&shared, method, &fields) {
        return limited;
    }
    match method {
        "getUpdates" if shared.lock().webhook.is_some() => error(
            StatusCode::CONFLICT,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
            None,
        ),
        "getUpdates" => get_updates(&shared, &fields).await,
        "setWebhook" => {
            let url = fields
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let secret = fields
                .get("secret_token")
                .and_then(Value::as_str)
                .unwrap_or_default();
            shared.lock().webhook = Some((url.to_owned(), secret.to_owned()));
            shared.changed.notify_waiters();
            ok(json!(true))
        }
        "deleteWebhook" => {
            shared.lock().webhook = None;
            ok(json!(true))
        }
        "getMe" => ok(
            json!({"id": BOT_USER_ID, "is_bot": true, "first_name": "keyledger", "username": "keyledger_bot"}),
        ),
        "setMyCommands" => {
            let language = fields
                .get("language_code")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let commands = fields
                .get("commands")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .map(|c| {
                            (
                                c["command"].as_str().unwrap_or_default().to_owned(),
                                c["description"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            shared.lock().commands.push((language, commands));
            ok(json!(true))
        }
        "sendMessage" | "sendPhoto" | "editMessageText" | "answerCallbackQuery" => {
            record(&shared, method, &fields, file)
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found: method not found", None),
    }
}

/// A 429 for a message to a chat under its own flood limit, with the seconds left.
fn chat_limited(shared: &Shared, method: &str, fields: &Map<String, Value>) -> Option<Response> {
    if !matches!(method, "sendMessage" | "sendPhoto" | "editMessageText") {
        return None;
    }
    let chat = as_i64(fields.get("chat_id"))?;
    let mut inner = shared.lock();
    let until = *inner.chat_limits.get(&chat)?;
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        inner.chat_limits.remove(&chat);
        return None;
    }
    let retry_after = u32::try_from(left.as_secs() + 1).unwrap_or(u32::MAX);
    inner.rate_limited.push(RateLimited {
        method: method.to_owned(),
        chat_id: Some(chat),
        at: Instant::now(),
        retry_after,
    });
    drop(inner);
    shared.changed.notify_waiters();
    Some(error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too Many Requests: retry after {retry_after}"),
        Some(json!({"retry_after": retry_after})),
    ))
}

fn record(
    shared: &Shared,
    method: &str,
    fields: &Map<String, Value>,
    photo: Option<Vec<u8>>,
) -> Response {
    let mut inner = shared.lock();
    let text_field = match method {
        "sendPhoto" => "caption",
        _ => "text",
    };
    let text = fields
        .get(text_field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (chat_id, message_id) = match method {
        "answerCallbackQuery" => {
            let id = fields
                .get("callback_query_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            (inner.callback_chats.get(id).copied().unwrap_or(0), 0)
        }
        "editMessageText" => (
            as_i64(fields.get("chat_id")).unwrap_or(0),
            as_i64(fields.get("message_id")).unwrap_or(0) as i32,
        ),
        _ => {
            inner.next_message += 1;
            (
                as_i64(fields.get("chat_id")).unwrap_or(0),
                inner.next_message,
            )
        }
    };
    if method == "sendPhoto" && photo.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad Request: there is no photo in the request",
            None,
        );
    }
    let seq = inner.seq;
    inner.seq += 1;
    inner.sent.push(Sent {
        seq,
        method: method.to_owned(),
        chat_id,
        message_id,
        text: text.clone(),
        parse_mode: fields
            .get("parse_mode")
            .and_then(Value::as_str)
            .map(str::to_owned),
        buttons: buttons_of(fields),
        url_buttons: url_buttons_of(fields),
        photo,
        at: Instant::now(),
    });
    drop(inner);
    shared.changed.notify_waiters();
    if method == "answerCallbackQuery" {
        return ok(json!(true));
    }
    ok(bot_message(message_id, chat_id, &text))
}

async fn get_updates(shared: &Shared, fields: &Map<String, Value>) -> Response {
    let offset = as_i64(fields.get("offset")).unwrap_or(0);
    let timeout = as_i64(fields.get("timeout")).unwrap_or(0).clamp(0, 50) as u64;
    let until = Instant::now() + Duration::from_secs(timeout);
    {
        let mut inner = shared.lock();
        inner.get_updates_calls += 1;
        // An offset confirms every update before it, as Telegram does.
        inner
            .pending
            .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
    }
    shared.changed.notify_waiters();
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ready: Vec<Value> = {
            let mut inner = shared.lock();
            let mut ready: Vec<Value> = inner.redelivered.drain(..).collect();
            if !ready.is_empty() {
                inner.redelivered_at_call = Some(inner.get_updates_calls);
            }
            ready.extend(inner.pending.iter().cloned());
            ready
        };
        if !ready.is_empty() {
            return ok(Value::Array(ready));
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ok(json!([]));
        }
        let _ = tokio::time::timeout(left, notified).await;
    }
}
