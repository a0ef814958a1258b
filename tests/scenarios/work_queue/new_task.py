#!/usr/bin/env python3
"""The work-queue producer of RabbitMQ's tutorial 2, written for Warren's
own scenario tests: declares the durable queue and publishes one task as a
persistent message through the default exchange, then prints
" [x] Sent <task>".

Usage: new_task.py [words...]   (the words joined by spaces are the task;
each '.' in it is a second of work for the worker)
Environment: AMQP_HOST, AMQP_PORT (127.0.0.1:5672), AMQP_USER/AMQP_PASSWORD
(guest/guest), TASK_QUEUE (task_queue).
"""
import sys

import pika

import broker_address


def main():
    params = broker_address.parameters()
    queue = broker_address.task_queue()
    task = " ".join(sys.argv[1:]) or "Hello World!"
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=task.encode(),
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
    print(f" [x] Sent {task}", flush=True)


if __name__ == "__main__":
    main()
