//! Русский.

use time::OffsetDateTime;

use super::{CardState, Milestone, Texts, escape, utc_parts};

pub struct Russian;

fn link_block(link: Option<&str>) -> String {
    match link {
        Some(link) => format!(
            "\n\n<code>{}</code>\n\nНажмите на ссылку, чтобы скопировать её, или отсканируйте QR-код в v2rayNG, Hiddify или Streisand.",
            escape(link)
        ),
        None => "\n\nСсылка сейчас недоступна; откройте /key ещё раз через минуту.".to_owned(),
    }
}

fn expiry_line(texts: &Russian, expires_at: Option<OffsetDateTime>) -> String {
    match expires_at {
        Some(at) => format!("\nДействует до: {}", texts.date(at)),
        None => "\nДействует: бессрочно".to_owned(),
    }
}

const SORRY: &str = "Сервер снова отвечает — простите за ожидание.\n";

impl Texts for Russian {
    fn command_start(&self) -> &'static str {
        "Главное меню"
    }
    fn command_key(&self) -> &'static str {
        "Получить или показать VPN-ключ"
    }
    fn command_history(&self) -> &'static str {
        "История ваших ключей"
    }
    fn command_help(&self) -> &'static str {
        "Что умеет этот бот"
    }

    fn button_get_key(&self) -> &'static str {
        "🔑 Мой ключ"
    }
    fn button_history(&self) -> &'static str {
        "📜 История"
    }
    fn button_help(&self) -> &'static str {
        "❓ Помощь"
    }
    fn button_refresh(&self) -> &'static str {
        "🔄 Обновить"
    }
    fn button_revoke(&self) -> &'static str {
        "🗑 Отозвать"
    }
    fn button_confirm_refresh(&self) -> &'static str {
        "✅ Да, обновить"
    }
    fn button_confirm_revoke(&self) -> &'static str {
        "✅ Да, отозвать"
    }
    fn button_cancel(&self) -> &'static str {
        "✖️ Отмена"
    }

    fn greeting(&self, first_name: &str) -> String {
        format!(
            "Здравствуйте, {}! 👋\nЯ выдаю ваш личный VPN-ключ и слежу, чтобы он работал. Выберите действие:",
            escape(first_name)
        )
    }

    fn help(&self) -> String {
        "<b>Что я умею</b>\n\
         🔑 <b>Мой ключ</b> (/key) — получить VPN-ключ или показать текущий: ссылку для копирования и QR-код.\n\
         🔄 <b>Обновить</b> — заменить ключ новым. Старый перестанет работать — например, если он попал в чужие руки.\n\
         🗑 <b>Отозвать</b> — отключить ключ насовсем. Новый можно получить в любой момент.\n\
         📜 <b>История</b> (/history) — когда ключ был выдан, обновлён, отозван или истёк.\n\
         Я напишу вам, когда ключ готов, обновлён, отозван или скоро истечёт."
            .to_owned()
    }

    fn choose_location(&self) -> String {
        "Для какой локации нужен ключ?".to_owned()
    }

    fn key_card(
        &self,
        location: &str,
        state: CardState,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
    ) -> String {
        let location = escape(location);
        match state {
            CardState::Active => format!(
                "🔑 <b>Ваш ключ: {location}</b>{}{}",
                expiry_line(self, expires_at),
                link_block(link)
            ),
            CardState::Provisioning => format!(
                "⏳ Ваш ключ ({location}) настраивается на сервере. Я напишу, как только он будет готов."
            ),
            CardState::Rotating => format!(
                "⏳ Ваш ключ ({location}) обновляется. Я пришлю новый, как только он будет готов."
            ),
            CardState::Revoking => format!("⏳ Ваш ключ ({location}) отключается."),
            CardState::Revoked => format!(
                "Ваш ключ ({location}) отозван. Нажмите «{}», чтобы получить новый.",
                self.button_get_key()
            ),
            CardState::Expired => format!(
                "Срок вашего ключа ({location}) истёк. Нажмите «{}», чтобы получить новый.",
                self.button_get_key()
            ),
            CardState::Failed => format!(
                "⚠️ Сервер ({location}) не отвечает. Мы продолжаем попытки и напишем вам, когда ключ будет готов."
            ),
        }
    }

    fn key_requested(&self, location: &str) -> String {
        format!(
            "⏳ Настраиваю ваш ключ ({}). Пришлю ссылку и QR-код, как только сервер подтвердит.",
            escape(location)
        )
    }

    fn confirm_refresh(&self, location: &str) -> String {
        format!(
            "Обновить ключ ({})?\nТекущий ключ <b>перестанет работать</b>, новый нужно будет добавить в приложение.",
            escape(location)
        )
    }

    fn confirm_revoke(&self, location: &str) -> String {
        format!(
            "Отозвать ключ ({})?\nОн <b>перестанет работать</b> навсегда. Новый ключ можно получить позже.",
            escape(location)
        )
    }

    fn refresh_started(&self, location: &str) -> String {
        format!(
            "🔄 Обновляю ключ ({})… Пришлю новую ссылку и QR-код, как только сервер её примет.",
            escape(location)
        )
    }

    fn refresh_already_running(&self, location: &str) -> String {
        format!(
            "🔄 Ключ ({}) уже обновляется, новый скоро придёт.",
            escape(location)
        )
    }

    fn revoke_started(&self, location: &str) -> String {
        format!(
            "🗑 Отзываю ключ ({})… Сообщу, когда он будет отключён.",
            escape(location)
        )
    }

    fn cancelled(&self) -> String {
        "Хорошо, ничего не изменено.".to_owned()
    }

    fn not_your_key(&self) -> String {
        "Извините, эта кнопка относится к чужому ключу. Ничего не изменено.".to_owned()
    }

    fn stale_button(&self) -> String {
        "Эта кнопка устарела, поэтому ничего не изменено. Вот ваш ключ сейчас.".to_owned()
    }

    fn no_keys(&self) -> String {
        format!(
            "У вас пока нет ключа. Нажмите «{}», чтобы получить его.",
            self.button_get_key()
        )
    }

    fn history_title(&self, location: &str) -> String {
        format!("📜 <b>Ваш ключ: {}</b>", escape(location))
    }

    fn milestone(&self, milestone: Milestone) -> &'static str {
        match milestone {
            Milestone::Issued => "выдан",
            Milestone::Ready => "готов на сервере",
            Milestone::Refreshed => "обновлён",
            Milestone::Revoked => "отозван",
            Milestone::Expired => "истёк",
            Milestone::Renewed => "продлён",
            Milestone::Repaired => "восстановлен на сервере",
            Milestone::Failed => "сбой сервера",
        }
    }

    fn unknown_input(&self) -> String {
        "Я понимаю только кнопки и команды /key, /history и /help.".to_owned()
    }

    fn try_again_later(&self) -> String {
        "У нас что-то пошло не так. Попробуйте ещё раз через минуту.".to_owned()
    }

    fn unknown_location(&self) -> String {
        "Эта локация больше не доступна. Выберите другую.".to_owned()
    }

    fn notify_ready(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        format!(
            "{}✅ <b>Ваш ключ ({}) готов.</b>{}{}",
            if after_failure { SORRY } else { "" },
            escape(location),
            expiry_line(self, expires_at),
            link_block(link)
        )
    }

    fn notify_refreshed(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        format!(
            "{}✅ <b>Ваш ключ ({}) обновлён.</b> Старый ключ больше не работает; добавьте новый в приложение.{}{}",
            if after_failure { SORRY } else { "" },
            escape(location),
            expiry_line(self, expires_at),
            link_block(link)
        )
    }

    fn notify_revoked(&self, location: &str) -> String {
        format!(
            "🗑 Ваш ключ ({}) отозван и больше не работает.",
            escape(location)
        )
    }

    fn notify_expired(&self, location: &str) -> String {
        format!(
            "⌛ Срок вашего ключа ({}) истёк, он больше не работает.",
            escape(location)
        )
    }

    fn notify_renewed(&self, location: &str, expires_at: OffsetDateTime) -> String {
        format!(
            "📅 Ваш ключ ({}) продлён до {}.",
            escape(location),
            self.date(expires_at)
        )
    }

    fn notify_failed(&self, location: &str) -> String {
        format!(
            "⚠️ Сервер ({}) сейчас не отвечает. Мы продолжаем попытки и напишем вам, когда всё будет готово.",
            escape(location)
        )
    }

    fn expiry_warning(&self, location: &str, expires_at: OffsetDateTime) -> String {
        format!(
            "⏰ Ваш ключ ({}) истекает {}.",
            escape(location),
            self.date(expires_at)
        )
    }

    fn date(&self, at: OffsetDateTime) -> String {
        let (y, mo, d, h, mi) = utc_parts(at);
        format!("{d:02}.{mo:02}.{y:04} {h:02}:{mi:02} UTC")
    }
}
