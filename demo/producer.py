"""
The demo's sample producer: simulated price ticks as JSON, a few per second
per symbol, keyed by symbol so each symbol stays in one partition.

    python demo/producer.py --bootstrap 127.0.0.1:19092 --topic prices
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import time

from confluent_kafka import Producer

SYMBOLS = {"KIWI": 42.0, "TWST": 17.5, "AUTB": 88.25, "RDKF": 130.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="prices")
    parser.add_argument("--rate", type=float, default=5.0, help="ticks per second in all")
    args = parser.parse_args()

    running = True

    def stop(signum: int, frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    prices = dict(SYMBOLS)
    sequence = 0
    while running:
        symbol = random.choice(list(prices))
        prices[symbol] = round(max(1.0, prices[symbol] * (1 + random.gauss(0, 0.002))), 2)
        tick = {"symbol": symbol, "price": prices[symbol], "seq": sequence, "ts": int(time.time() * 1000)}
        producer.produce(args.topic, key=symbol.encode(), value=json.dumps(tick).encode())
        producer.poll(0)
        sequence += 1
        time.sleep(1.0 / args.rate)
    producer.flush(5)


if __name__ == "__main__":
    main()
