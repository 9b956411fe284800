"""Sound as a kind of data (data.modality=audio; docs/audio.md): files read into clips (io, data), the
log-mel front end (frontend), the views the methods compare (views), and the spoken-words set."""

BUILTIN_AUDIO = ("spoken-words", "phone-prompts")   # fetched audio sets a source may name (selfsup data fetch)
