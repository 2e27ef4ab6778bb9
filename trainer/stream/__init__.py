"""The production consumer: ``consume`` (Redis Streams consumer group -> durable replay -> TSH
updates -> periodic export), ``joiner`` (rank + feedback + next rank -> transitions) and
``codec`` (the transition wire format)."""
