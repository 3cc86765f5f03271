/** Tenants' secrets (docs/secrets.md): what the API shows of them. A value is never in an answer. */
export interface SecretInfo {
  tenant: string;
  name: string;
  /** Hosts the value may be sent to (over TLS). */
  hosts: string[];
  /** `Name: text with {value}`, added to requests to the hosts that lack that header; null when none. */
  header: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface SetSecretBody {
  /** 8..8192 printable ASCII characters; stored encrypted, never returned. */
  value: string;
  hosts: string[];
  header?: string | null;
}
