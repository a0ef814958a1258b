"""The web console in headless Chromium, driven as a person would: log in,
see a queue made over AMQP (pika) appear with its message count, publish a
message from the queue's page and get it back, purge, delete; then the
queue is gone for AMQP clients too. Screenshots of the main pages are kept
in $CONSOLE_SCREENSHOTS (target/console-screenshots by default).

Needs Debian's chromium and chromium-driver (.ci/run installs them); the
suite is skipped with a line saying so when they are missing.
Environment: WARREN_BIN (the warren binary).
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pika
import pytest

WARREN = os.environ["WARREN_BIN"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS", os.path.join(os.getcwd(), "target", "console-screenshots"))
WAIT = 15

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("SKIPPED: the console tests need Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker():
    scratch = tempfile.mkdtemp()
    for _ in range(5):
        http = free_port()
        log = open(os.path.join(scratch, "broker.log"), "a")
        proc = subprocess.Popen(
            [WARREN, "--bind", "127.0.0.1", "--port", "0", "--management-port", str(http),
             "--prometheus-port", "0", "--data-dir", os.path.join(scratch, "data")],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        amqp = None
        for line in proc.stdout:
            if line.startswith("listening on "):
                amqp = int(line.rsplit(":", 1)[1])
                break
        if amqp:
            break
        proc.wait(timeout=10)
    else:
        pytest.fail("warren did not start: " + open(os.path.join(scratch, "broker.log")).read())
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    yield {"amqp": amqp, "http": http}
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def browser():
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    os.makedirs(SHOTS, exist_ok=True)
    yield driver
    driver.quit()


def wait_for(driver, what, condition):
    """Polls `condition` until it is truthy (returned), or fails with a screenshot."""
    try:
        # The console re-renders its page every few seconds: an element read
        # while it is replaced is simply read again.
        ignored = [NoSuchElementException, StaleElementReferenceException]
        return WebDriverWait(driver, WAIT, poll_frequency=0.2, ignored_exceptions=ignored).until(condition)
    except Exception:
        driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
        raise AssertionError(f"timed out waiting for {what}; page: {driver.find_element(By.ID, 'page').text[:2000]}")


def text_of(driver, element_id):
    """What an element shows (its text content, wherever the page is scrolled)."""
    return driver.find_element(By.ID, element_id).get_attribute("textContent").strip()


def row_of(driver, table_id, first_cells):
    """The cells of the first row of a table whose leading cells read `first_cells`."""
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        if cells[: len(first_cells)] == first_cells:
            return cells
    return None


def api_get(broker, path):
    request = urllib.request.Request(f"http://127.0.0.1:{broker['http']}{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=WAIT) as reply:
        return json.loads(reply.read())


def log_in(browser, broker):
    browser.get(f"http://127.0.0.1:{broker['http']}/")
    wait_for(browser, "the login form", lambda d: d.find_element(By.ID, "login-form").is_displayed())
    browser.find_element(By.NAME, "username").send_keys("guest")
    browser.find_element(By.NAME, "password").send_keys("guest")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(browser, "the overview", lambda d: "Overview" in d.find_element(By.ID, "page").text)


def amqp_channel(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker["amqp"]))
    return conn, conn.channel()


def test_a_person_manages_a_queue_from_the_console(broker, browser):
    conn, ch = amqp_channel(broker)
    ch.queue_declare("console-q", durable=True)
    for i in range(3):
        ch.basic_publish("", "console-q", f"task {i}".encode(), pika.BasicProperties(delivery_mode=2))

    log_in(browser, broker)
    wait_for(browser, "the object totals", lambda d: "Queues" in d.find_element(By.CSS_SELECTOR, ".tiles").text)
    browser.save_screenshot(os.path.join(SHOTS, "overview.png"))

    browser.find_element(By.CSS_SELECTOR, 'nav a[data-page="queues"]').click()
    # Vhost, name, type, node, features, ready, unacked, total.
    row = wait_for(browser, "console-q with 3 ready", lambda d: (r := row_of(d, "queues", ["/", "console-q"])) and r[5] == "3" and r)
    assert row[2] == "classic" and row[7] == "3", row
    assert row[3] == api_get(broker, "/api/queues/%2F/console-q")["node"], row
    browser.save_screenshot(os.path.join(SHOTS, "queues.png"))

    browser.find_element(By.LINK_TEXT, "console-q").click()
    wait_for(browser, "the queue page", lambda d: text_of(d, "queue-name") == "console-q")
    publish = browser.find_element(By.ID, "publish")
    publish.find_element(By.NAME, "payload").send_keys("hello from the console")
    publish.find_element(By.TAG_NAME, "button").click()
    wait_for(browser, "4 ready", lambda d: text_of(d, "q-ready") == "4")
    browser.save_screenshot(os.path.join(SHOTS, "queue.png"))

    # Get (and remove) all four: the console's message comes last.
    get = browser.find_element(By.ID, "get")
    count = get.find_element(By.NAME, "count")
    count.clear()
    count.send_keys("4")
    Select(get.find_element(By.NAME, "ackmode")).select_by_value("ack_requeue_false")
    get.find_element(By.TAG_NAME, "button").click()
    got = wait_for(
        browser,
        "four messages",
        lambda d: len(m := [e.get_attribute("textContent") for e in d.find_elements(By.CSS_SELECTOR, "#got pre.message")]) == 4 and m,
    )
    assert got == ["task 0", "task 1", "task 2", "hello from the console"]
    wait_for(browser, "0 ready", lambda d: text_of(d, "q-ready") == "0")

    # Purge what AMQP adds now, from the console.
    for i in range(2):
        ch.basic_publish("", "console-q", f"late {i}".encode())
    browser.refresh()
    wait_for(browser, "2 ready", lambda d: text_of(d, "q-ready") == "2")
    browser.find_element(By.ID, "purge").click()
    browser.switch_to.alert.accept()
    wait_for(browser, "purged", lambda d: text_of(d, "q-ready") == "0")
    assert ch.queue_declare("console-q", passive=True).method.message_count == 0

    browser.find_element(By.ID, "delete").click()
    browser.switch_to.alert.accept()
    wait_for(browser, "back on the queue list", lambda d: d.current_url.endswith("#/queues"))
    wait_for(browser, "console-q gone", lambda d: row_of(d, "queues", ["/", "console-q"]) is None and "Queues" in d.find_element(By.ID, "page").text)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as gone:
        ch.queue_declare("console-q", passive=True)
    assert gone.value.reply_code == 404
    conn.close()


def test_the_other_pages_render_and_a_connection_can_be_closed(broker, browser):
    conn, ch = amqp_channel(broker)
    ch.exchange_declare("console-x", "topic", durable=True)
    log_in(browser, broker)
    for page, expect in [("exchanges", "console-x"), ("channels", "guest"), ("admin", "guest"), ("definitions", "Download definitions")]:
        browser.find_element(By.CSS_SELECTOR, f'nav a[data-page="{page}"]').click()
        wait_for(browser, f"the {page} page", lambda d: expect in d.find_element(By.ID, "page").text)
        browser.save_screenshot(os.path.join(SHOTS, f"{page}.png"))
    browser.find_element(By.CSS_SELECTOR, 'nav a[data-page="connections"]').click()
    wait_for(browser, "the connection", lambda d: d.find_elements(By.CSS_SELECTOR, "[data-close]"))
    browser.save_screenshot(os.path.join(SHOTS, "connections.png"))
    browser.find_element(By.CSS_SELECTOR, "[data-close]").click()
    browser.switch_to.alert.accept()
    deadline = time.monotonic() + WAIT
    while conn.is_open:
        assert time.monotonic() < deadline, "the connection closed from the console stays open"
        try:
            conn.process_data_events(time_limit=0.2)
        except pika.exceptions.ConnectionClosedByBroker as closed:
            assert closed.reply_code == 320
            break


def test_a_quorum_queue_shows_its_leader_and_members(broker, browser):
    conn, ch = amqp_channel(broker)
    ch.queue_declare("console-qq", durable=True, arguments={"x-queue-type": "quorum"})
    queue = api_get(broker, "/api/queues/%2F/console-qq")
    assert queue["leader"] and queue["members"] == [queue["leader"]], queue
    log_in(browser, broker)
    browser.find_element(By.CSS_SELECTOR, 'nav a[data-page="queues"]').click()
    row = wait_for(browser, "console-qq listed", lambda d: row_of(d, "queues", ["/", "console-qq"]))
    assert row[2] == "quorum" and row[3] == queue["leader"], row
    browser.find_element(By.LINK_TEXT, "console-qq").click()
    wait_for(browser, "the queue page", lambda d: text_of(d, "queue-name") == "console-qq")
    assert text_of(browser, "q-leader") == queue["leader"]
    assert text_of(browser, "q-members") == ", ".join(queue["members"])
    browser.save_screenshot(os.path.join(SHOTS, "quorum-queue.png"))
    conn.close()
