"""The re-ranker against Gemini's model lifecycle: each model's request shape, retirement (404) as
`model_unavailable`, fallback models (on 404 only), thinking tokens in usage and cost, the start-up models lookup.

Everything goes through the real google-genai client to the local stand-in, which answers like the API does
for each model (tests/fixtures/gemini_standin.py). Time is an injected clock: nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from PIL import Image
from pydantic import ValidationError

from clipsearch.rerank.gemini import GeminiReranker
from clipsearch.rerank.thumbnails import ThumbnailProvider
from clipsearch.settings import GeminiModelProfile, RerankSettings
from clipsearch.types import Candidate
from tests.fixtures.gemini_standin import (
    MODELS,
    GeminiStandin,
    no_longer_available,
    quota,
    rank,
    unavailable,
)

API_KEY = "test-key-lifecycle-7d2e"
IDS = [f"photo{i:02d}Lc_x" for i in range(5)]
PRIMARY, FALLBACK = "gemini-3.5-flash-lite", "gemini-3.1-flash-lite"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    for i, pid in enumerate(IDS):
        Image.new("RGB", (120, 80), (50 * i, 90, 160)).save(tmp_path / f"{pid}.jpg", format="JPEG")
    return tmp_path


@pytest.fixture
def candidates() -> list[Candidate]:
    return [
        Candidate(photo_id=pid, score=0.4 - i * 0.01, rank=i + 1, image_url="http://127.0.0.1:9/none")
        for i, pid in enumerate(IDS)
    ]


MakeReranker = Callable[..., GeminiReranker]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_reranker(gemini_standin: GeminiStandin, images_dir: Path, clock: FakeClock) -> Iterator[MakeReranker]:
    made: list[GeminiReranker] = []

    def make(**overrides: object) -> GeminiReranker:
        fields: dict[str, object] = {
            "api_key": API_KEY,
            "base_url": gemini_standin.base_url,
            "budget_s": 2.0,
            "max_retries": 1,
            "response_cache_size": 0,
            "thumbnail_px": 64,
            "model_unavailable_hold_s": 600.0,
        }
        fields.update(overrides)
        settings = RerankSettings.model_validate(fields)
        reranker = GeminiReranker(
            settings,
            api_key=API_KEY,
            thumbnails=ThumbnailProvider.from_settings(settings, images_dir),
            clock=clock,
            sleep=lambda _s: None,
        )
        made.append(reranker)
        return reranker

    yield make
    for r in made:
        r.close()


def models_asked(standin: GeminiStandin) -> list[str]:
    return [r.model for r in standin.requests]


# -- the request each default model gets ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "thinking", "temperature", "media"),
    [
        ("gemini-3.5-flash-lite", {"thinkingLevel": "MINIMAL"}, None, "MEDIA_RESOLUTION_LOW"),
        ("gemini-3.1-flash-lite", {"thinkingLevel": "MINIMAL"}, None, "MEDIA_RESOLUTION_LOW"),
        ("gemini-2.5-flash-lite", {"thinkingBudget": 0}, 0.0, None),
    ],
)
def test_each_known_model_gets_only_fields_it_accepts(
    make_reranker: MakeReranker,
    gemini_standin: GeminiStandin,
    candidates: list[Candidate],
    model: str,
    thinking: dict[str, object],
    temperature: float | None,
    media: str | None,
) -> None:
    out = make_reranker(model=model, fallback_models=[]).rerank("a red tram", candidates, k=3)
    assert out.applied, out.detail  # the stand-in answers 400 to anything this model rejects
    (req,) = gemini_standin.requests
    cfg = req.generation_config
    assert req.model == model and req.thinking_config == thinking
    assert cfg.get("temperature") == temperature
    assert cfg.get("mediaResolution") == media
    assert not {"frequencyPenalty", "presencePenalty", "topK", "topP"} & set(cfg)
    assert req.ignored == []
    assert [c["role"] for c in req.body["contents"]] == ["user"]


# -- the stand-in rejects what the API rejects (so a regression in the request shows up as a failed test) ----
def _sdk(standin: GeminiStandin) -> genai.Client:
    return genai.Client(
        api_key=API_KEY,
        http_options=genai_types.HttpOptions(
            base_url=standin.base_url, retry_options=genai_types.HttpRetryOptions(attempts=1)
        ),
    )


def _user(text: str) -> genai_types.Content:
    return genai_types.Content(role="user", parts=[genai_types.Part.from_text(text=text)])


@pytest.mark.parametrize(
    ("config", "contents_roles", "message"),
    [
        (genai_types.GenerateContentConfig(frequency_penalty=0.5), ["user"], "frequencyPenalty"),
        (genai_types.GenerateContentConfig(presence_penalty=0.2), ["user"], "presencePenalty"),
        (genai_types.GenerateContentConfig(), ["user", "model"], "last turn"),
        (
            genai_types.GenerateContentConfig(
                thinking_config=genai_types.ThinkingConfig(
                    thinking_level=genai_types.ThinkingLevel.MINIMAL, thinking_budget=0
                )
            ),
            ["user"],
            "together",
        ),
    ],
    ids=["frequency-penalty", "presence-penalty", "model-last-turn", "level-and-budget"],
)
def test_standin_rejects_what_gemini_3_5_flash_lite_rejects(
    gemini_standin: GeminiStandin,
    config: genai_types.GenerateContentConfig,
    contents_roles: list[str],
    message: str,
) -> None:
    client = _sdk(gemini_standin)
    contents = [
        genai_types.Content(role=role, parts=[genai_types.Part.from_text(text=f"turn {n}")])
        for n, role in enumerate(contents_roles)
    ]
    with pytest.raises(genai_errors.ClientError) as err:
        client.models.generate_content(model=PRIMARY, contents=contents, config=config)
    assert err.value.code == 400 and err.value.status == "INVALID_ARGUMENT"
    assert message in (err.value.message or "")
    client.close()


def test_standin_accepts_penalties_on_older_models_and_notes_ignored_sampling(gemini_standin: GeminiStandin) -> None:
    client = _sdk(gemini_standin)
    client.models.generate_content(
        model="gemini-2.5-flash-lite",
        contents=[_user("hi")],
        config=genai_types.GenerateContentConfig(frequency_penalty=0.5, temperature=0.0),
    )
    client.models.generate_content(
        model=PRIMARY,
        contents=[_user("hi")],
        config=genai_types.GenerateContentConfig(temperature=0.0, top_k=3, top_p=0.5),
    )
    with pytest.raises(genai_errors.ClientError) as err:  # a thinking level on a thinking-budget model
        client.models.generate_content(
            model="gemini-2.5-flash-lite",
            contents=[_user("hi")],
            config=genai_types.GenerateContentConfig(
                thinking_config=genai_types.ThinkingConfig(thinking_level=genai_types.ThinkingLevel.LOW)
            ),
        )
    assert err.value.code == 400
    older, newer, _ = gemini_standin.requests
    assert older.ignored == [] and newer.ignored == ["temperature", "topK", "topP"]
    client.close()


def test_standin_serves_known_models_and_404s_retired_ones(gemini_standin: GeminiStandin) -> None:
    base = gemini_standin.base_url
    headers = {"x-goog-api-key": API_KEY}
    assert httpx.get(f"{base}/v1beta/models/{PRIMARY}", headers=headers).json()["name"] == f"models/{PRIMARY}"
    gemini_standin.retire(PRIMARY)
    looked_up = httpx.get(f"{base}/v1beta/models/{PRIMARY}", headers=headers)
    assert looked_up.status_code == 404 and looked_up.json()["error"]["status"] == "NOT_FOUND"
    answer = httpx.post(f"{base}/v1beta/models/{PRIMARY}:generateContent", headers=headers, json={"contents": []})
    assert answer.status_code == 404 and "is not found for API version v1beta" in answer.json()["error"]["message"]
    assert set(MODELS) > set(gemini_standin.models)  # retiring changed this stand-in only


# -- retirement ------------------------------------------------------------------------------------------------
def test_404_is_model_unavailable_and_holds_the_model_off(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate], clock: FakeClock
) -> None:
    gemini_standin.retire(PRIMARY)
    reranker = make_reranker(fallback_models=[], model_unavailable_hold_s=600.0)
    out = reranker.rerank("a red tram", candidates, k=3)
    assert not out.applied and out.fallback_reason == "model_unavailable"
    assert [r.candidate.photo_id for r in out.results] == IDS[:3]  # CLIP order
    assert f"{PRIMARY} was not found" in (out.detail or "") and "404 NOT_FOUND" in (out.detail or "")
    assert gemini_standin.request_count == 1  # a 404 is not retried
    assert reranker.status() == f"unavailable: {PRIMARY} was not found"
    assert reranker.model_availability() == {PRIMARY: False}
    assert reranker.breaker.consecutive_failures == 0  # the endpoint is healthy; the load breaker is untouched

    clock.now += 599.0  # held off: answered at once, no HTTP call
    again = reranker.rerank("a blue tram", candidates, k=3)
    assert again.fallback_reason == "model_unavailable" and "next check in 1s" in (again.detail or "")
    assert gemini_standin.request_count == 1

    clock.now += 2.0  # the hold is over: one trial call; the model is back, so re-ranking resumes
    gemini_standin.serve(PRIMARY, MODELS[PRIMARY])
    assert reranker.rerank("a green tram", candidates, k=3).applied
    assert reranker.model_availability() == {PRIMARY: True}
    assert reranker.status() == f"{PRIMARY} via google-genai (model found)"


def test_no_longer_available_answer_is_model_unavailable(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate]
) -> None:
    gemini_standin.script(no_longer_available(PRIMARY))
    out = make_reranker(fallback_models=[]).rerank("q", candidates, k=3)
    assert out.fallback_reason == "model_unavailable" and "no longer available" in (out.detail or "")


def test_fallback_model_answers_when_the_primary_is_not_found(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate]
) -> None:
    gemini_standin.retire(PRIMARY)
    reranker = make_reranker(fallback_models=[FALLBACK])
    out = reranker.rerank("a red tram", candidates, k=3)
    assert out.applied and out.model == FALLBACK
    assert f"answered by fallback model {FALLBACK}" in (out.detail or "")
    assert models_asked(gemini_standin) == [PRIMARY, FALLBACK]
    assert out.usage["attempts"] == 2
    assert out.usage["cost_usd"] == pytest.approx((1200 * 0.25 + 80 * 1.50) / 1e6)  # the fallback's prices
    assert reranker.status() == f"{FALLBACK} via google-genai (fallback); unavailable: {PRIMARY} was not found"

    second = reranker.rerank("a blue tram", candidates, k=3)  # the primary is held off: straight to the fallback
    assert second.applied and second.model == FALLBACK
    assert models_asked(gemini_standin) == [PRIMARY, FALLBACK, FALLBACK]


def test_all_models_not_found(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate]
) -> None:
    gemini_standin.retire(PRIMARY, FALLBACK)
    reranker = make_reranker(fallback_models=[FALLBACK])
    out = reranker.rerank("q", candidates, k=3)
    assert out.fallback_reason == "model_unavailable"
    assert models_asked(gemini_standin) == [PRIMARY, FALLBACK]
    assert reranker.status() == f"unavailable: {PRIMARY} was not found; nor were the fallbacks {FALLBACK}"
    assert reranker.rerank("q2", candidates, k=3).fallback_reason == "model_unavailable"
    assert gemini_standin.request_count == 2  # both held off


@pytest.mark.parametrize("load", [quota(), unavailable()], ids=["429", "503"])
def test_fallbacks_are_not_tried_on_load(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate], load: object
) -> None:
    gemini_standin.default = load  # type: ignore[assignment]
    reranker = make_reranker(fallback_models=[FALLBACK], max_retries=1)
    out = reranker.rerank("q", candidates, k=3)
    assert out.fallback_reason in ("quota", "overloaded")
    assert models_asked(gemini_standin) == [PRIMARY, PRIMARY]  # retried on the same model, never the fallback
    assert reranker.model_availability() == {PRIMARY: None, FALLBACK: None}


# -- thinking tokens ------------------------------------------------------------------------------------------------
def test_thinking_tokens_are_counted_and_billed_as_output(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate]
) -> None:
    gemini_standin.script(rank(thoughts_tokens=300))
    out = make_reranker().rerank("q", candidates, k=3)
    assert out.usage["thoughts_tokens"] == 300 and out.usage["output_tokens"] == 380
    assert out.usage["total_tokens"] == 1580
    assert out.usage["cost_usd"] == pytest.approx((1200 * 0.30 + 380 * 2.50) / 1e6)


def test_a_higher_thinking_level_shows_in_usage(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate]
) -> None:
    profile = RerankSettings().models[PRIMARY].model_copy(update={"thinking_level": "low"})
    out = make_reranker(models={PRIMARY: profile}).rerank("q", candidates, k=3)
    assert gemini_standin.requests[0].thinking_config == {"thinkingLevel": "LOW"}
    assert out.usage["thoughts_tokens"] == 64  # the stand-in's price of `low`; `minimal` costs none


# -- start-up models lookup -------------------------------------------------------------------------------------
def test_startup_check_finds_models_and_marks_missing_ones(
    make_reranker: MakeReranker, gemini_standin: GeminiStandin, candidates: list[Candidate]
) -> None:
    reranker = make_reranker(fallback_models=[FALLBACK])
    assert reranker.check_models() == {PRIMARY: "found", FALLBACK: "found"}
    assert gemini_standin.lookups == [PRIMARY, FALLBACK] and gemini_standin.request_count == 0
    assert reranker.status() == f"{PRIMARY} via google-genai (model found)"

    gemini_standin.retire(PRIMARY)
    retired = make_reranker(fallback_models=[FALLBACK])
    found = retired.check_models()
    assert found[PRIMARY].startswith("not found") and found[FALLBACK] == "found"
    assert retired.model_availability() == {PRIMARY: False, FALLBACK: True}
    out = retired.rerank("q", candidates, k=3)  # the first search goes straight to the fallback
    assert out.applied and out.model == FALLBACK
    assert models_asked(gemini_standin) == [FALLBACK]


def test_startup_check_that_cannot_tell_changes_nothing(make_reranker: MakeReranker) -> None:
    reranker = make_reranker(base_url="http://127.0.0.1:9", fallback_models=[])  # nothing listens there
    found = reranker.check_models(timeout_s=1.0)
    assert found[PRIMARY].startswith("could not check")
    assert reranker.model_availability() == {PRIMARY: None}
    assert reranker.status().startswith(f"{PRIMARY} via google-genai (could not check:")


# -- settings -----------------------------------------------------------------------------------------------------
def test_settings_refuse_a_model_without_a_profile_and_merge_added_profiles() -> None:
    with pytest.raises(ValidationError, match=r"no rerank\.models entry"):
        RerankSettings(model="gemini-9-flash-lite")
    with pytest.raises(ValidationError, match=r"no rerank\.models entry"):
        RerankSettings(fallback_models=["gemini-9-flash-lite"])
    added = RerankSettings.model_validate(
        {
            "model": "gemini-9-flash-lite",
            "models": {
                "gemini-9-flash-lite": {"price_input_per_mtok": 1, "price_output_per_mtok": 2, "prices_read": "x"}
            },
        }
    )
    assert {"gemini-9-flash-lite", PRIMARY, FALLBACK} <= set(added.models)
    assert RerankSettings(model=FALLBACK).model_chain == (FALLBACK,)  # the primary is not its own fallback
    with pytest.raises(ValidationError, match="not both"):
        GeminiModelProfile(
            price_input_per_mtok=0, price_output_per_mtok=0, prices_read="x", thinking_level="low", thinking_budget=0
        )
    default = RerankSettings()
    assert default.model == PRIMARY and default.model_chain == (PRIMARY, FALLBACK)
    assert "2026-12-02" in (RerankSettings.model_fields["model"].description or "")
    assert all(p.prices_read for p in default.models.values())
