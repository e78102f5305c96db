"""The SMTP server shared by `submit --listen` (MSA) and `relay --listen` (inbound MTA).

`session` is the sans-I/O protocol (parser, state table, hooks), `replies` the named replies,
`server` the asyncio transport around it, `received` the trace header both policies add.
"""
