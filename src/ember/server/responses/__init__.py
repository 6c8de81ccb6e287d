"""OpenAI's Responses API on the chat pipeline, with stored responses per owner account."""
