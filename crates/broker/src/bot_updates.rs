//! Telegram updates on their way to the bot: a direct exchange and
//! [`BOT_UPDATE_PARTITIONS`] quorum queues. An update goes to the partition of its chat, so
//! one chat's updates stay in order in one queue while different chats spread over all of
//! them. A partition is read by one consumer at a time (an AMQP exclusive consumer: the
//! broker itself refuses a second), and the bot replicas share the partitions between
//! them. The ingress publishes with confirms before Telegram is told the update was taken;
//! the bot acknowledges a delivery only after handling it, so a crash loses nothing.
//!
//! The bot decides which replica reads which partition; this module only knows the names,
//! how to publish, and how to consume one partition.

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use crate::BrokerError;
use crate::connection::within;
use crate::relay::{confirmed, open_confirm_channel};

/// Where the ingress publishes updates; the routing key is the partition number.
pub const BOT_UPDATES_EXCHANGE: &str = "keyledger.bot-updates";
/// How many partitions updates are spread over. More partitions than bot replicas lets
/// replicas share the load; changing it needs the old queues drained first.
pub const BOT_UPDATE_PARTITIONS: u16 = 8;
/// Where an update no bot can handle goes, for operators to inspect.
pub const BOT_UPDATES_DEAD_LETTERS: &str = "keyledger.bot-updates.dlq";
/// The routing key of dead letters from every partition.
pub const BOT_UPDATES_DEAD_LETTER_KEY: &str = "keyledger.bot-updates";

/// The queue of `partition`.
pub fn partition_queue(partition: u16) -> String {
    format!("{BOT_UPDATES_EXCHANGE}.{partition}")
}

/// The partition a chat's updates go to. A fixed mix of the chat id (not the standard
/// library's hasher, which promises nothing across releases): every process and every
/// version puts a chat in the same place.
pub fn partition_of(chat: i64) -> u16 {
    // SplitMix64's finaliser: nearby chat ids land in unrelated partitions.
    let mut z = chat as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(BOT_UPDATE_PARTITIONS)) as u16
}

/// Publishes updates, each confirmed by the broker before [`UpdatePublisher::publish`]
/// returns.
pub struct UpdatePublisher {
    connection: Connection,
    channel: Channel,
}

impl UpdatePublisher {
    /// Connects, declares the topology and turns on publisher confirms.
    pub async fn connect(amqp_url: &str) -> Result<Self, BrokerError> {
        let connection = crate::connect(amqp_url).await?;
        let channel = open_confirm_channel(&connection).await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Whether the connection is still usable; a publisher that is not is replaced.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes one update (its JSON as Telegram sent it) to its chat's partition and
    /// waits for the broker's confirm.
    pub async fn publish(&self, update_id: i64, chat: i64, body: &[u8]) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert("chat_id".into(), AMQPValue::LongLongInt(chat));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(ShortString::from(update_id.to_string()))
            .with_app_id("keyledger".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let routing_key = partition_of(chat).to_string();
        let confirm = within(
            "publishing an update",
            self.channel.basic_publish(
                BOT_UPDATES_EXCHANGE.into(),
                routing_key.as_str().into(),
                options,
                body,
                properties,
            ),
        )
        .await?;
        let confirmation = within("confirming an update", confirm).await?;
        confirmed(Ok(confirmation), update_id, "telegram update")
    }

    pub async fn close(self) {
        crate::connection_close(&self.connection, "update publisher stopping").await;
    }
}

/// Starts consuming `partition` as its only consumer, with at most `prefetch`
/// unacknowledged deliveries. Fails (the broker answers `RESOURCE_LOCKED`) while another
/// consumer still holds the partition.
pub async fn consume_partition(
    connection: &Connection,
    partition: u16,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let channel = within("opening a channel", connection.create_channel()).await?;
    within("declaring the topology", crate::topology::declare(&channel)).await?;
    within(
        "setting the prefetch",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let options = BasicConsumeOptions {
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    let queue = partition_queue(partition);
    let consumer = within(
        "starting to consume a partition",
        channel.basic_consume(
            queue.as_str().into(),
            consumer_tag.into(),
            options,
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((channel, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        let mut counts = [0u32; BOT_UPDATE_PARTITIONS as usize];
        for chat in 1_000..9_000i64 {
            let partition = partition_of(chat);
            assert_eq!(
                partition,
                partition_of(chat),
                "the same chat, the same place"
            );
            counts[usize::from(partition)] += 1;
        }
        // 8,000 chats over 8 partitions: each within 15% of 1,000.
        for (partition, count) in counts.iter().enumerate() {
            assert!(
                (850..=1150).contains(count),
                "partition {partition} got {count} of 8000 chats"
            );
        }
        // Fixed values: a change here would move every chat's queue between versions.
        assert_eq!(
            [partition_of(1), partition_of(42), partition_of(-100)],
            [5, 2, 4]
        );
    }
}
