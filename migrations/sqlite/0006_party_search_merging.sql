-- The party search index merges its segments eight at a time (FTS5's default is four) and
-- collects a whole import chunk's postings in memory before writing them as one segment.
-- Every merge rewrites the postings it merges: at a million parties the default spent a
-- seventh of an import merging. A search reads more segments in return (at most seven per
-- level instead of three), well within its latency budget.
INSERT INTO party_search (party_search, rank) VALUES ('automerge', 8);
INSERT INTO party_search (party_search, rank) VALUES ('crisismerge', 32);
INSERT INTO party_search (party_search, rank) VALUES ('hashsize', 16777216);
