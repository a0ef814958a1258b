"""Where the work-queue scripts find the broker: AMQP_HOST, AMQP_PORT
(127.0.0.1:5672), AMQP_USER and AMQP_PASSWORD (guest/guest), and the queue
name from TASK_QUEUE (task_queue)."""
import os

import pika


def parameters():
    return pika.ConnectionParameters(
        host=os.environ.get("AMQP_HOST", "127.0.0.1"),
        port=int(os.environ.get("AMQP_PORT", "5672")),
        credentials=pika.PlainCredentials(
            os.environ.get("AMQP_USER", "guest"), os.environ.get("AMQP_PASSWORD", "guest")
        ),
    )


def task_queue():
    return os.environ.get("TASK_QUEUE", "task_queue")
