"""Text: tokenizers, sources (folders of .txt, .jsonl, paragraphs of a .txt, lists), token tensors
(one row per document, or a packed on-disk stream for corpora of any size), sampling and perplexity
of pretrained language models, and a bag-of-words baseline. The text backbones live in
`selfsup.backbones.text`, the text methods (clm, mlm, simcse) in `selfsup.methods`.
"""
from selfsup.text.tokenizer import (BOS, EOS, MASK, NUM_SPECIAL, PAD, BPETokenizer, ByteTokenizer, build_tokenizer,
                                    load_tokenizer, save_tokenizer, tokenizer_from_dict)
from selfsup.text.data import TextSet, encode_documents, iter_documents, pack_corpus
from selfsup.text.generate import generate, perplexity
from selfsup.text.baselines import bag_of_words

__all__ = ["PAD", "BOS", "EOS", "MASK", "NUM_SPECIAL", "ByteTokenizer", "BPETokenizer", "build_tokenizer",
           "load_tokenizer", "save_tokenizer", "tokenizer_from_dict", "TextSet", "encode_documents",
           "iter_documents", "pack_corpus", "generate", "perplexity", "bag_of_words"]
