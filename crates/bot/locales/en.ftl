### Everything the bot says in English. English is the reference language: every other
### locale file has exactly the same messages and attributes, and a message missing there
### is shown in English.
###
### Texts are Telegram HTML: <b>, <code> and friends work; write &amp; &lt; &gt; for & < >.
### Variables ($location, $name, $url) arrive already escaped.
### A line break in a message is a line break in Telegram; a blank line is kept too.
### A literal brace is written {"{"} or {"}"}.

## Commands, as registered with Telegram (the menu next to the text field).

command =
    .start = Main menu
    .key = Get or show your VPN key
    .history = What happened to your keys
    .help = What this bot can do

## Buttons.

button =
    .get-key = 🔑 My key
    .history = 📜 History
    .help = ❓ Help
    .refresh = 🔄 Refresh
    .revoke = 🗑 Revoke
    .confirm-refresh = ✅ Yes, refresh
    .confirm-revoke = ✅ Yes, revoke
    .cancel = ✖️ Cancel
    .open-subscription = 📲 Open the subscription page
    .new-link = 🔁 New subscription link
    .confirm-new-link = ✅ Yes, make a new link

## Conversation.

# $name: the user's first name.
greeting =
    Hello, { $name }! 👋
    I hand out your personal VPN key and keep it working. Choose what to do:

# $subscription: "yes" when subscriptions are served, else "no".
help =
    <b>What I can do</b>
    { $subscription ->
        [yes] 🔑 <b>My key</b> (/key) — get a VPN key, or show the one you have: your subscription (one link your app follows for all your keys) and, for manual set-up, the key's own link and QR code.
       *[no] 🔑 <b>My key</b> (/key) — get a VPN key, or show the one you have: a link to copy and a QR code to scan.
    }
    🔄 <b>Refresh</b> — replace your key with a new one. The old one stops working, for example if someone else got hold of it.
    🗑 <b>Revoke</b> — switch your key off for good. You can get a new one at any time.{ $subscription ->
        [yes]
            {""}
            🔁 <b>New subscription link</b> — if your subscription link got into the wrong hands: the old link and every key fetched through it stop working.
       *[no] {""}
    }
    📜 <b>History</b> (/history) — when your key was issued, refreshed, revoked or expired.
    I message you when a key is ready, refreshed, revoked, about to expire or out of traffic.

choose-location = Which location do you want a key for?

# A date and time, always in UTC. Every part arrives as digits, zero-padded:
# $year (4 digits), $month, $day, $hour, $minute (2 digits each).
date = { $year }-{ $month }-{ $day } { $hour }:{ $minute } UTC

# An amount of traffic, in steps of 1024. $value: the number, with `number.decimal-mark`.
size =
    .b = { $value } B
    .kib = { $value } KB
    .mib = { $value } MB
    .gib = { $value } GB
    .tib = { $value } TB

number =
    .decimal-mark = .

# How long a key is valid, as a line of a key card. $date: a formatted `date`.
validity =
    .until = Valid until: { $date }
    .forever = Valid until: no end date

# The traffic a key used, as a line of a key card: $used, $limit, $left are formatted `size`s.
usage =
    .limited = Traffic: { $used } of { $limit } used, { $left } left
    .unlimited = Traffic: { $used } used, no limit

# The key's link block in a card. $url: the vless:// link.
# $subscription: "yes" when the user's subscription is shown above (the link is then only
# for apps that take no subscription), else "no".
link =
    .copy =
        <code>{ $url }</code>

        { $subscription ->
            [yes] Only for an app that takes no subscription: tap the link to copy it, or scan the QR code.
           *[no] Tap the link to copy it, or scan the QR code in v2rayNG, Hiddify or Streisand.
        }
    .missing = The link is not available right now; open /key again in a minute.

# The user's subscription: one URL their VPN app follows for every key. $url: the URL.
subscription =
    📲 <b>Your subscription</b>
    <code>{ $url }</code>

    Add this link to your VPN app once, as a subscription: v2rayNG, Hiddify, Happ, Streisand, sing-box and most others take it (tap the link to copy it, scan the QR code, or open the page). The app then keeps your keys up to date by itself.

# A key's card, one attribute per state of the key.
# $details: a `validity` line, then a `usage` line once the server has counted traffic;
# $link: one of the `link` blocks; $subscription: "yes" when the subscription is shown above.
key-card =
    .active =
        { $subscription ->
            [yes] 🔧 <b>Manual set-up: your key for { $location }</b>
           *[no] 🔑 <b>Your key for { $location }</b>
        }
        { $details }

        { $link }
    .provisioning = ⏳ Your key for { $location } is being set up on the server. I will message you as soon as it is ready.
    .rotating = ⏳ Your key for { $location } is being refreshed. I will send you the new one as soon as it is ready.
    .revoking = ⏳ Your key for { $location } is being switched off.
    .revoked = Your key for { $location } is revoked. Press «{ button.get-key }» to get a new one.
    .expired = Your key for { $location } has expired. Press «{ button.get-key }» to get a new one.
    .depleted =
        📉 Your key for { $location } has used up its traffic and is paused until the limit is raised or reset.
        { $details }
    .failed = ⚠️ The server for { $location } is not answering. We keep trying and will message you when your key is ready.

# $subscription: "yes" when the key also goes into the user's subscription, else "no".
key-requested =
    { $subscription ->
        [yes] ⏳ Setting up your key for { $location }. Your subscription gets it on the app's next update; I will also message you with the link and QR code as soon as the server confirms it.
       *[no] ⏳ Setting up your key for { $location }. I will message you with the link and QR code as soon as the server confirms it.
    }

# $subscription: "yes" when the user's app follows their subscription, else "no".
confirm-refresh =
    Refresh your key for { $location }?
    { $subscription ->
        [yes] The current key <b>stops working</b>. Your subscription link stays the same: your app picks up the new key on its next update, or right away if you tap «Update subscription» in it.
       *[no] The current key <b>stops working</b>; you will need to add the new one to your app.
    }

confirm-revoke =
    Revoke your key for { $location }?
    It <b>stops working</b> for good. You can get a new key later.

# $subscription: as in `confirm-refresh`.
refresh-started =
    { $subscription ->
        [yes] 🔄 Refreshing your key for { $location }… Your subscription link stays the same: your app picks up the new key on its next update, or right away with «Update subscription». I will also send you the new link and QR code.
       *[no] 🔄 Refreshing your key for { $location }… I will send you the new link and QR code as soon as the server has it.
    }
refresh-already-running = 🔄 Your key for { $location } is already being refreshed; the new one is on its way.
revoke-started = 🗑 Revoking your key for { $location }… I will tell you when it is switched off.
confirm-new-link =
    Make a new subscription link?
    The current link <b>stops working</b>, and so does every key already fetched through it: all your keys are replaced. Then add the new link to your app instead of the old one.
new-link-done = 🔁 Done: your subscription has a new link and your keys are being replaced. The old link no longer works.
cancelled = OK, nothing changed.
not-your-key = Sorry, this button belongs to someone else's key. Nothing was changed.
stale-button = This button is out of date, so nothing was changed. Here is your key as it is now.
no-keys = You have no key yet. Press «{ button.get-key }» to get one.

# The title of a key's history; its entries follow, one `milestone` each.
history-title = 📜 <b>Your key for { $location }</b>

# An entry of a key's history, after its date.
milestone =
    .issued = issued
    .ready = ready on the server
    .refreshed = refreshed
    .revoked = revoked
    .expired = expired
    .renewed = extended
    .repaired = repaired on the server
    .failed = server problem
    .depleted = traffic used up, paused
    .quota-changed = traffic limit changed

unknown-input = I only understand the buttons and the commands /key, /history and /help.
try-again-later = Something went wrong on our side. Please try again in a minute.
unknown-location = This location is no longer offered. Please choose another one.
limit-reached = ⏸ That was a lot in a short time. Please try again in { $minutes ->
        [one] a minute
       *[other] { $minutes } minutes
    }.
revoked-by-admin = 🚫 Your key for { $location } was switched off by an administrator, so I cannot issue a new one myself. Please contact support.
# The user was blocked by an administrator: no new key, no new link.
user-blocked = 🚫 Sorry, your access has been suspended by an administrator, so I cannot issue or change keys for you. Please contact support if you think this is a mistake.
# Only the users on the operator's list may get keys here.
not-allowed = 🔒 Sorry, keys here are only for invited users. Please contact support if you should have access.

## Notifications.

# The first line of a key notification that comes after a server problem.
server-back = The server is answering again — sorry for the wait.

# $after-failure: "yes" after a server problem (then `server-back` comes first), else "no".
# $subscription: "yes" when the user has a subscription, else "no";
# $subscription-url: its URL (empty without one).
notify-ready =
    { $after-failure ->
        [yes]
            { server-back }
            ✅ <b>Your key for { $location } is ready.</b>
       *[no] ✅ <b>Your key for { $location } is ready.</b>
    }{ $subscription ->
        [yes] {" "}It is in your subscription too: your app adds it on its next update.
       *[no] {""}
    }
    { $validity }

    { $link }

notify-refreshed =
    { $after-failure ->
        [yes]
            { server-back }
            ✅ <b>Your key for { $location } was refreshed.</b>
       *[no] ✅ <b>Your key for { $location } was refreshed.</b>
    } { $subscription ->
        [yes] The old key no longer works. Your app gets the new one through your subscription (<code>{ $subscription-url }</code>) on its next update, or right away if you tap «Update subscription» in it.
       *[no] The old key no longer works; add this new one to your app.
    }
    { $validity }

    { $link }

notify-revoked = 🗑 Your key for { $location } is revoked and no longer works.
notify-expired = ⌛ Your key for { $location } has expired and no longer works.
# $date: a formatted `date`.
notify-renewed = 📅 Your key for { $location } was extended until { $date }.
notify-failed = ⚠️ The server for { $location } is not answering right now. We keep trying and will message you when it is done.
# $date: a formatted `date`.
expiry-warning = ⏰ Your key for { $location } expires on { $date }.
# $used, $limit: formatted `size`s, the panel's counters when it paused the key.
notify-depleted =
    📉 Your key for { $location } has used up its traffic: { $used } of { $limit }.
    The server has paused it. To go on, ask support to raise your limit or reset your traffic; I will message you as soon as the key works again. Your link stays the same.
# $quota: one of the `quota` texts.
notify-restored = ✅ Your key for { $location } works again: { $quota }. Nothing to change in your app.
# The traffic limit of a key that works again. $limit: a formatted `size`.
quota =
    .limited = new traffic limit { $limit }
    .unlimited = no traffic limit any more
