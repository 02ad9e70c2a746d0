import torch, transformers
from engine import DEFAULT_MODEL
tok = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL)
cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
torch.manual_seed(0)
transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained("/tmp/llama8x512")
tok.save_pretrained("/tmp/llama8x512")
