"""Query understanding and conversation: Gemini reads a sentence into a composed `Query`, and a chat refines it.

- `compose`: validation of a model's answer against `clipsearch.query` (nothing trusted), the parts a person
  sees and can remove, and what changed between turns.
- `conversation`: signed, bounded conversation state that the client carries (the API's `conversation_id`).
- `understander`: the Gemini call (budget, retries, breaker, spend guard, cache, skip) -> `Understanding`.

`understander` imports google-genai (~0.7 s), so import it where it is used.
"""
