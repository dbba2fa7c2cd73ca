"""What tests share (imported as `support.*`, never from another test module): tiny offline models, tokenizers and
checkpoint casts (factories), a stub judge server (stub_judge), and the cache sandbox (sandbox)."""
