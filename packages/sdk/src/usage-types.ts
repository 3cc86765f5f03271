/** GET /v1/usage (docs/metering.md). `cost` is in the server's price sheet's (unnamed) currency. */
export interface UsageTotals {
  cpuSeconds: number;
  memoryGiBSeconds: number;
  diskGiBHours: number;
  netBytesIn: number;
  netBytesOut: number;
  cost: number;
}

export interface UsageReport extends UsageTotals {
  from: string | null;
  to: string | null;
  sandboxes: Array<UsageTotals & { sandbox: string; tenant: string }>;
  /** Daily rollups per tenant (UTC days). */
  days: Array<UsageTotals & { day: string; tenant: string }>;
}

/** One of sandbox or tenant; from/to are inclusive UTC days (YYYY-MM-DD). */
export interface UsageQuery {
  sandbox?: string;
  tenant?: string;
  from?: string;
  to?: string;
}
