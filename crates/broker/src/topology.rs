//! The RabbitMQ names of docs/queues.md and their idempotent declaration.
//!
//! Structure (queue type, bindings, where dead letters go) is declared by every role at
//! start. The one tunable, the broker-side delivery limit, is a policy (see
//! [`policies`]): operators change it in the management UI without redeclaring anything.

use domain::EventType;

use crate::bot_updates::{
    BOT_UPDATE_PARTITIONS, BOT_UPDATES_DEAD_LETTER_KEY, BOT_UPDATES_DEAD_LETTERS,
    BOT_UPDATES_EXCHANGE, partition_queue,
};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde_json::{Value, json};

/// Every event, routing key = event type.
pub const EVENTS_EXCHANGE: &str = "keyledger.events";
/// Dead letters, routed by the name of the queue they came from.
pub const DEAD_LETTER_EXCHANGE: &str = "keyledger.dlx";
/// Deliveries after which the broker itself dead-letters a message, whatever the consumer
/// does (a consumer that crashes on a message never gets to dead-letter it). The consumer
/// runtime gives up earlier, with the reason in a header; this is the backstop.
pub const BROKER_DELIVERY_LIMIT: i64 = 20;

/// The queues of docs/queues.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// What the worker must apply to panels.
    X3uiWorker,
    /// Every event, for the read models.
    Projector,
    /// What users are told about.
    BotNotify,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::X3uiWorker, Queue::Projector, Queue::BotNotify];

    pub fn name(self) -> &'static str {
        match self {
            Queue::X3uiWorker => "keyledger.x3ui-worker",
            Queue::Projector => "keyledger.projector",
            Queue::BotNotify => "keyledger.bot-notify",
        }
    }

    pub fn dead_letter_queue(self) -> String {
        format!("{}.dlq", self.name())
    }

    /// Routing keys bound from [`EVENTS_EXCHANGE`].
    pub fn bindings(self) -> &'static [&'static str] {
        match self {
            // Whatever changes what a panel must hold.
            Queue::X3uiWorker => {
                const {
                    &[
                        EventType::Requested.as_str(),
                        EventType::RotationRequested.as_str(),
                        EventType::RevocationRequested.as_str(),
                        EventType::Expired.as_str(),
                        EventType::Renewed.as_str(),
                        EventType::QuotaChanged.as_str(),
                    ]
                }
            }
            // Every event, so none is unroutable (the relay treats a return as a failure);
            // the projector passes over those of users' access streams.
            Queue::Projector => &["key.#", "subscription.#", "user.#"],
            // What a user hears about.
            Queue::BotNotify => {
                const {
                    &[
                        EventType::Provisioned.as_str(),
                        EventType::Rotated.as_str(),
                        EventType::Revoked.as_str(),
                        EventType::Expired.as_str(),
                        EventType::Renewed.as_str(),
                        EventType::ProvisioningFailed.as_str(),
                        EventType::Depleted.as_str(),
                        EventType::QuotaChanged.as_str(),
                    ]
                }
            }
        }
    }

    pub fn from_name(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|queue| queue.name() == name)
    }
}

fn quorum_arguments(dead_letter_routing_key: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(routing_key) = dead_letter_routing_key {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(routing_key.into()),
        );
    }
    arguments
}

/// Declares the exchanges, queues and bindings. Idempotent: declaring what exists with
/// the same arguments changes nothing.
pub async fn declare(channel: &Channel) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in Queue::ALL {
        channel
            .queue_declare(
                queue.name().into(),
                queue_options,
                quorum_arguments(Some(queue.name())),
            )
            .await?;
        for routing_key in queue.bindings() {
            channel
                .queue_bind(
                    queue.name().into(),
                    EVENTS_EXCHANGE.into(),
                    (*routing_key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        let dead_letters = queue.dead_letter_queue();
        channel
            .queue_declare(
                dead_letters.as_str().into(),
                queue_options,
                quorum_arguments(None),
            )
            .await?;
        channel
            .queue_bind(
                dead_letters.as_str().into(),
                DEAD_LETTER_EXCHANGE.into(),
                queue.name().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    declare_bot_updates(channel, durable, queue_options).await
}

/// The bot's update partitions (see [`crate::bot_updates`]) and their dead-letter queue.
async fn declare_bot_updates(
    channel: &Channel,
    durable: ExchangeDeclareOptions,
    queue_options: QueueDeclareOptions,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            BOT_UPDATES_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    for partition in 0..BOT_UPDATE_PARTITIONS {
        let queue = partition_queue(partition);
        channel
            .queue_declare(
                queue.as_str().into(),
                queue_options,
                quorum_arguments(Some(BOT_UPDATES_DEAD_LETTER_KEY)),
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                BOT_UPDATES_EXCHANGE.into(),
                partition.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_declare(
            BOT_UPDATES_DEAD_LETTERS.into(),
            queue_options,
            quorum_arguments(None),
        )
        .await?;
    channel
        .queue_bind(
            BOT_UPDATES_DEAD_LETTERS.into(),
            DEAD_LETTER_EXCHANGE.into(),
            BOT_UPDATES_DEAD_LETTER_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The topology in the management API's definitions format (exchanges, queues, bindings,
/// policies) for `vhost`: what [`declare`] and [`policies`] create, and what
/// `deploy/rabbitmq/definitions.json` must hold.
pub fn definitions(vhost: &str) -> Value {
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    for queue in Queue::ALL {
        queues.push(json!({
            "name": queue.name(), "vhost": vhost, "durable": true, "auto_delete": false,
            "arguments": {
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": queue.name(),
            }
        }));
        queues.push(json!({
            "name": queue.dead_letter_queue(), "vhost": vhost, "durable": true,
            "auto_delete": false, "arguments": {"x-queue-type": "quorum"}
        }));
        for routing_key in queue.bindings() {
            bindings.push(json!({
                "source": EVENTS_EXCHANGE, "vhost": vhost, "destination": queue.name(),
                "destination_type": "queue", "routing_key": routing_key, "arguments": {}
            }));
        }
        bindings.push(json!({
            "source": DEAD_LETTER_EXCHANGE, "vhost": vhost,
            "destination": queue.dead_letter_queue(), "destination_type": "queue",
            "routing_key": queue.name(), "arguments": {}
        }));
    }
    for partition in 0..BOT_UPDATE_PARTITIONS {
        let queue = partition_queue(partition);
        queues.push(json!({
            "name": queue, "vhost": vhost, "durable": true, "auto_delete": false,
            "arguments": {
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": BOT_UPDATES_DEAD_LETTER_KEY,
            }
        }));
        bindings.push(json!({
            "source": BOT_UPDATES_EXCHANGE, "vhost": vhost, "destination": queue,
            "destination_type": "queue", "routing_key": partition.to_string(), "arguments": {}
        }));
    }
    queues.push(json!({
        "name": BOT_UPDATES_DEAD_LETTERS, "vhost": vhost, "durable": true,
        "auto_delete": false, "arguments": {"x-queue-type": "quorum"}
    }));
    bindings.push(json!({
        "source": DEAD_LETTER_EXCHANGE, "vhost": vhost,
        "destination": BOT_UPDATES_DEAD_LETTERS, "destination_type": "queue",
        "routing_key": BOT_UPDATES_DEAD_LETTER_KEY, "arguments": {}
    }));
    json!({
        "exchanges": [
            {"name": BOT_UPDATES_EXCHANGE, "vhost": vhost, "type": "direct", "durable": true,
             "auto_delete": false, "internal": false, "arguments": {}},
            {"name": EVENTS_EXCHANGE, "vhost": vhost, "type": "topic", "durable": true,
             "auto_delete": false, "internal": false, "arguments": {}},
            {"name": DEAD_LETTER_EXCHANGE, "vhost": vhost, "type": "direct", "durable": true,
             "auto_delete": false, "internal": false, "arguments": {}},
        ],
        "queues": queues,
        "bindings": bindings,
        "policies": policies(vhost),
    })
}

/// The policies operators may tune: the broker-side delivery limit of the work queues.
pub fn policies(vhost: &str) -> Value {
    json!([{
        "name": "keyledger-delivery-limit",
        "vhost": vhost,
        "pattern": r"^keyledger\.(x3ui-worker|projector|bot-notify|bot-updates\.[0-9]+)$",
        "apply-to": "queues",
        "priority": 0,
        "definition": {"delivery-limit": BROKER_DELIVERY_LIMIT},
    }])
}
