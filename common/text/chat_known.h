/* The chat templates pdserve recognises exactly (common/text/chat.c's
 * known[]): SHA-256 of the template text as the model's tokenizer_config.json
 * (or GGUF) holds it, the model it comes from, the family that renders it,
 * and how its model calls tools (NONE when absent).
 * Copies of each are in tests/golden/chat/ (test_chat.c checks the hashes
 * against them, and the renderings against transformers'). */
{"872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
 "HuggingFaceTB/SmolLM2-135M-Instruct", PD_CHAT_CHATML, PD_CHAT_CALLS_NONE},
    {"cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f", "Qwen/Qwen2.5-7B-Instruct",
     PD_CHAT_CHATML, PD_CHAT_CALLS_HERMES},
    {"87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5", "Qwen/Qwen3-0.6B",
     PD_CHAT_QWEN3, PD_CHAT_CALLS_HERMES},
    {"e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
     "meta-llama/Llama-3.1-8B-Instruct, Llama-3.3-70B-Instruct", PD_CHAT_LLAMA31,
     PD_CHAT_CALLS_LLAMA},
    {"e4676cb56dffea7782fd3e2b577cfaf1e123537e6ef49b3ec7caa6c095c62272",
     "mistralai/Mistral-Nemo-Instruct-2407", PD_CHAT_MISTRAL, PD_CHAT_CALLS_NONE},
    {"e8d5b5a546d3f19df16a5320c614fab05bdc4edd50e850f1afd947b503ea41cf",
     "meta-llama/Llama-2-7b-chat-hf", PD_CHAT_LLAMA2, PD_CHAT_CALLS_NONE},
    {"ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122",
     "meta-llama/Meta-Llama-3-8B-Instruct", PD_CHAT_LLAMA3, PD_CHAT_CALLS_NONE},
