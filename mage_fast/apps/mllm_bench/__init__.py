"""MME, MMBench and SEED-Bench on local files in their published formats.

    python -m mage_fast.apps.mllm_bench {mme,mmbench,seed} --model DIR --data PATH [--out answers.jsonl]
    python -m mage_fast.apps.mllm_bench {mme,mmbench,seed} --data PATH --answers FILE   # score only

Each benchmark module reads its format into :class:`~mage_fast.apps.mllm_bench.common.Question` rows and
scores a ``{question_id: answer text}`` mapping; :mod:`mage_fast.apps.mllm_bench.runner` answers the
questions with a model (LLaVA-1.5's prompts, batched greedy decoding, a resumable LLaVA-style
answers JSONL).
"""
