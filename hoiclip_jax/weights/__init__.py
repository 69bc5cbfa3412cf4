"""All weight and prompt IO, and the initial parameters: reading `.pth` without torch
(`torch_pickle`), the DETR-R50 / HOICLIP key mappings (`detr_import`, `hoiclip_import`,
`mapping`, `pretrained`), Hugging Face CLIP folders (`clip`, `tokenizer`), the prompt-embedding
file (`prompts`), E_v (`verb_features`) and the text-derived classifiers (`classifiers`)."""
