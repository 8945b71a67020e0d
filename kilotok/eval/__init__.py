"""Accuracy measurements of a model as kilotok runs it: perplexity on a text, greedy agreement with fp32."""
