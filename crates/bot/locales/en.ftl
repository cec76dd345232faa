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

## Conversation.

# $name: the user's first name.
greeting =
    Hello, { $name }! 👋
    I hand out your personal VPN key and keep it working. Choose what to do:

help =
    <b>What I can do</b>
    🔑 <b>My key</b> (/key) — get a VPN key, or show the one you have: a link to copy and a QR code to scan.
    🔄 <b>Refresh</b> — replace your key with a new one. The old one stops working, for example if someone else got hold of it.
    🗑 <b>Revoke</b> — switch your key off for good. You can get a new one at any time.
    📜 <b>History</b> (/history) — when your key was issued, refreshed, revoked or expired.
    I message you when a key is ready, refreshed, revoked or about to expire.

choose-location = Which location do you want a key for?

# A date and time, always in UTC. Every part arrives as digits, zero-padded:
# $year (4 digits), $month, $day, $hour, $minute (2 digits each).
date = { $year }-{ $month }-{ $day } { $hour }:{ $minute } UTC

# How long a key is valid, as a line of a key card. $date: a formatted `date`.
validity =
    .until = Valid until: { $date }
    .forever = Valid until: no end date

# The key's link block in a card. $url: the vless:// link.
link =
    .copy =
        <code>{ $url }</code>

        Tap the link to copy it, or scan the QR code in v2rayNG, Hiddify or Streisand.
    .missing = The link is not available right now; open /key again in a minute.

# A key's card, one attribute per state of the key.
# $validity: one of the `validity` lines; $link: one of the `link` blocks.
key-card =
    .active =
        🔑 <b>Your key for { $location }</b>
        { $validity }

        { $link }
    .provisioning = ⏳ Your key for { $location } is being set up on the server. I will message you as soon as it is ready.
    .rotating = ⏳ Your key for { $location } is being refreshed. I will send you the new one as soon as it is ready.
    .revoking = ⏳ Your key for { $location } is being switched off.
    .revoked = Your key for { $location } is revoked. Press «{ button.get-key }» to get a new one.
    .expired = Your key for { $location } has expired. Press «{ button.get-key }» to get a new one.
    .depleted = 📉 Your key for { $location } has used up its traffic and is paused until the limit is raised or reset.
    .failed = ⚠️ The server for { $location } is not answering. We keep trying and will message you when your key is ready.

key-requested = ⏳ Setting up your key for { $location }. I will message you with the link and QR code as soon as the server confirms it.

confirm-refresh =
    Refresh your key for { $location }?
    The current key <b>stops working</b>; you will need to add the new one to your app.

confirm-revoke =
    Revoke your key for { $location }?
    It <b>stops working</b> for good. You can get a new key later.

refresh-started = 🔄 Refreshing your key for { $location }… I will send you the new link and QR code as soon as the server has it.
refresh-already-running = 🔄 Your key for { $location } is already being refreshed; the new one is on its way.
revoke-started = 🗑 Revoking your key for { $location }… I will tell you when it is switched off.
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

unknown-input = I only understand the buttons and the commands /key, /history and /help.
try-again-later = Something went wrong on our side. Please try again in a minute.
unknown-location = This location is no longer offered. Please choose another one.

## Notifications.

# The first line of a key notification that comes after a server problem.
server-back = The server is answering again — sorry for the wait.

# $after-failure: "yes" after a server problem (then `server-back` comes first), else "no".
notify-ready =
    { $after-failure ->
        [yes]
            { server-back }
            ✅ <b>Your key for { $location } is ready.</b>
       *[no] ✅ <b>Your key for { $location } is ready.</b>
    }
    { $validity }

    { $link }

notify-refreshed =
    { $after-failure ->
        [yes]
            { server-back }
            ✅ <b>Your key for { $location } was refreshed.</b> The old key no longer works; add this new one to your app.
       *[no] ✅ <b>Your key for { $location } was refreshed.</b> The old key no longer works; add this new one to your app.
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
