-- Access-token signing keys (owned by the auth service).
-- A key is published in the JWKS from created_at, signs from activates_at, and leaves the JWKS at
-- retires_at, which rotation sets only after the last token it signed has expired.
CREATE TABLE signing_keys (
    kid              text PRIMARY KEY,           -- RFC 7638 thumbprint of the public key
    private_key_pem  text NOT NULL,              -- PKCS#8, encrypted when a passphrase is set
    public_jwk       jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    activates_at     timestamptz NOT NULL,
    retires_at       timestamptz,
    CHECK (retires_at IS NULL OR retires_at > activates_at)
);
