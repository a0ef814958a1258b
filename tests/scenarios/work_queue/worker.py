#!/usr/bin/env python3
"""The work-queue worker of RabbitMQ's tutorial 2, written for Warren's own
scenario tests: takes one task at a time (prefetch 1), works a second per
'.' in it, then acks it by hand.

Besides what a person reads, it prints lines the tests parse:
  EVENT ready <worker>                                       consuming
  EVENT recv <worker> <redelivered 0|1> <delivery_mode> <task>  got a task
  EVENT done <worker> <task>                                 acked it
Environment: AMQP_HOST, AMQP_PORT, AMQP_USER, AMQP_PASSWORD, TASK_QUEUE as
for new_task.py; WORKER_NAME (default: the process id).
"""
import os
import time

import pika

import broker_address

NAME = os.environ.get("WORKER_NAME", str(os.getpid()))


def on_task(channel, delivery, properties, body):
    task = body.decode(errors="replace")
    redelivered = 1 if delivery.redelivered else 0
    print(f" [x] {NAME} received {task}", flush=True)
    print(f"EVENT recv {NAME} {redelivered} {properties.delivery_mode} {task}", flush=True)
    time.sleep(task.count("."))
    print(f"EVENT done {NAME} {task}", flush=True)
    channel.basic_ack(delivery_tag=delivery.delivery_tag)


def main():
    params = broker_address.parameters()
    queue = broker_address.task_queue()
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=on_task)
    print(f"EVENT ready {NAME}", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
