"""The Knowledge Bases page in a real browser against the real service and model."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.web.conftest import ACCESS_TOKEN_TTL_S, LiveServer

pytestmark = pytest.mark.browser

MODEL = "all-minilm-l6-v2"
EMAIL = "ada@example.com"
PASSWORD = "correct horse battery"

RECIPES = [
    ("pasta", "Simmer crushed tomatoes with garlic and basil for a pasta sauce."),
    ("bread", "Knead flour, water, salt and yeast, then bake the loaf until golden."),
    ("curry", "Fry onions with cumin and turmeric, add chickpeas and coconut milk."),
    ("salad", "Toss lettuce, cucumber and olives with lemon and olive oil."),
    ("pancakes", "Whisk eggs, milk and flour; fry thin pancakes in butter."),
    ("soup", "Boil lentils with carrots and celery into a thick soup."),
    ("risotto", "Stir arborio rice with stock and parmesan until creamy."),
]
PHYSICS = [
    ("gravity", "Objects fall because mass curves spacetime."),
    ("light", "Light travels at about three hundred thousand kilometres per second."),
    ("entropy", "Entropy of an isolated system never decreases."),
]


def index(server: LiveServer, workspace: str, scope: str, items: list[tuple[str, str]]) -> None:
    server.run(
        workspace,
        {
            "model": MODEL,
            "mode": "index",
            "scope": scope,
            "input": {
                "items": [
                    {"id": item_id, "text": text, "metadata": {"n": n}}
                    for n, (item_id, text) in enumerate(items)
                ]
            },
        },
    )


def row(page: Any, scope: str) -> Any:
    return page.locator(f'tr[data-scope="{scope}"]')


def test_sign_in_browse_page_search_delete_sign_out(live_server: LiveServer, page: Any) -> None:
    from playwright.sync_api import expect

    server = live_server
    server.add_user(email=EMAIL, password=PASSWORD, workspace="acme")
    index(server, "acme", "recipes", RECIPES)
    index(server, "acme", "physics", PHYSICS)
    index(server, "other", "secret-notes", [("s1", "The other workspace's private note.")])

    # Sign in by keyboard; a wrong password is explained in words first.
    page.goto(f"{server.base_url}/")
    email = page.get_by_label("Email")
    email.focus()
    page.keyboard.type(EMAIL)
    page.keyboard.press("Tab")
    page.keyboard.type("wrong password")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("the email or password is wrong")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")

    # The list: both scopes of acme with their counts, nothing of the other workspace.
    expect(page.get_by_role("heading", name="Knowledge bases")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/knowledge-bases$"))
    expect(row(page, "recipes")).to_contain_text("7")
    expect(row(page, "physics")).to_contain_text("3")
    expect(page.locator("#who")).to_have_text(f"{EMAIL} · acme")
    assert "secret-notes" not in page.content()
    # The page holds a refresh token for this tab and never an API key.
    stored = page.evaluate("JSON.stringify({...sessionStorage, ...localStorage})")
    assert "vsrt_" in stored
    assert "vsk_" not in stored and "vsat_" not in stored

    # Open a scope and page through it, five at a time.
    page.get_by_role("link", name=re.compile("Open scope recipes")).click()
    expect(page.get_by_role("heading", name="Scope recipes")).to_be_visible()
    page.get_by_label("Items per page").select_option("5")
    items = page.locator("#items > li")
    expect(items).to_have_count(5)
    expect(page.locator("#page-label")).to_have_text("Page 1 · items 1–5 of 7")
    page.get_by_role("button", name="Next page").click()
    expect(items).to_have_count(2)
    expect(page.locator("#page-label")).to_have_text("Page 2 · items 6–7 of 7")
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    seen = set(page.locator("#items code").all_inner_texts())
    assert seen <= {i for i, _ in RECIPES} and len(seen) == 2

    # Outlive the access token: the page refreshes it silently and carries on.
    time.sleep(ACCESS_TOKEN_TTL_S + 0.5)
    page.get_by_role("button", name="Previous page").click()
    expect(items).to_have_count(5)
    expect(page.get_by_role("heading", name="Sign in")).to_be_hidden()

    # Search inside the scope.
    page.get_by_label("Search in this scope").fill("tomato sauce for spaghetti")
    page.get_by_role("button", name="Search", exact=True).click()
    hits = page.locator("#hits > li")
    expect(hits.first).to_contain_text("pasta")
    expect(hits.first).to_contain_text("score")

    # Delete: the dialog shows the dry-run count; Escape cancels, then confirm.
    page.get_by_role("button", name="Delete scope…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("permanently deletes 7 items")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert _scopes(server, "acme") == {"recipes": 7, "physics": 3}
    page.get_by_role("button", name="Delete scope…").click()
    dialog.get_by_role("button", name="Delete 7 items").click()
    expect(page.get_by_role("status")).to_have_text("Deleted 7 items from scope recipes.")
    expect(row(page, "physics")).to_be_visible()
    expect(row(page, "recipes")).to_have_count(0)
    assert _scopes(server, "acme") == {"physics": 3}
    assert _scopes(server, "other") == {"secret-notes": 1}

    # Sign out: back to the form, and the stored refresh token is gone.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.errors == []  # no uncaught script errors along the way


def _scopes(server: LiveServer, workspace: str) -> dict[str, int]:
    r = httpx.get(
        f"{server.base_url}/api/knowledge-bases",
        headers={"X-API-Key": server.api_key(workspace)},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return {kb["scope"]: kb["point_count"] for kb in r.json()["data"]}
