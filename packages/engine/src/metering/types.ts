/**
 * Metering (docs/metering.md): what each sandbox used, and what it cost by the operator's price
 * sheet. Prices are plain numbers in whatever currency the operator bills in.
 */
export interface PriceSheet {
  /** Per vCPU-hour of CPU time actually used (cgroup accounting, not wall time). */
  vcpuHour: number;
  /** Per GiB-hour of memory in use (sampled cgroup usage, integrated over time). */
  memoryGiBHour: number;
  /** Per GiB-hour of reserved disk (the sandbox's disk quota over its lifetime). */
  diskGiBHour: number;
  /** Per GiB moved through the egress proxy, either way. */
  netGiB: number;
}

export const DEFAULT_PRICES: PriceSheet = { vcpuHour: 0.04, memoryGiBHour: 0.005, diskGiBHour: 0.0001, netGiB: 0.05 };

export interface UsageTotals {
  cpuSeconds: number;
  memoryGiBSeconds: number;
  diskGiBHours: number;
  netBytesIn: number;
  netBytesOut: number;
  cost: number;
}

export interface SandboxUsage extends UsageTotals {
  sandbox: string;
  tenant: string;
}

export interface DailyUsage extends UsageTotals {
  /** UTC day, YYYY-MM-DD. */
  day: string;
  tenant: string;
}

export interface UsageQuery {
  sandbox?: string;
  tenant?: string;
  /** Inclusive UTC days (YYYY-MM-DD or any ISO time: its day is used). */
  from?: string;
  to?: string;
}

export interface UsageReport extends UsageTotals {
  from: string | null;
  to: string | null;
  sandboxes: SandboxUsage[];
  days: DailyUsage[];
}
