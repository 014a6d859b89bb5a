/**
 * corral: microVM sandboxes for untrusted code, as an actor runtime.
 *
 * @example
 * import { Sandbox } from 'corral';
 * await using sb = await Sandbox.builder('worker').create();
 * console.log((await sb.shell('echo hi')).stdout);
 */

export { Sandbox, getDefaultSupervisor, type StopOptions, type CallOptions, type ExecStreamOptions, type SandboxSummary, type ListOptions, type LookupOptions } from './sdk/Sandbox.ts';
export { SandboxBuilder, type PlacementOptions } from './sdk/SandboxBuilder.ts';
export { Cluster, type ClusterOptions, type ClusterNode, type ClusterEventsOptions } from './cluster/Cluster.ts';
export { ExecResult, ExecStream, type ExecOptions, type ExecStreamItem } from './sdk/exec.ts';
export type { StdinSource } from './sdk/execStdin.ts';
export { SandboxFs, type FsEntry, type FsEntryType, type FsStat, type FsWriteOptions, type FsTransferOptions } from './sdk/SandboxFs.ts';
export { FsWatch, type FsWatchEvent, type FsWatchEventType, type FsWatchEndReason, type FsWatchOptions } from './sdk/FsWatch.ts';
export type { ExecInfo, ProbeRequest, ProbeResult } from './actor/contract.ts';
export { Supervisor, type SupervisorOptions, type CreateOptions, type SandboxInfo } from './supervisor/Supervisor.ts';
export { EventBus, ofType } from './bus/EventBus.ts';
export type { SandboxEvent, SandboxEventType, EventOf, StopReason, SandboxStatus, Accel } from './bus/events.ts';
export { CorralError, InvalidOptionError, ErrorCodes, type ErrorCode } from './errors.ts';
export { type SandboxConfig, type LogLevel, normalizeConfig } from './config.ts';
export { sandboxMachine } from '../machines/sandbox.machine.ts';
export { Image, type ImageInfo, type ImageOptions, type PruneResult } from './image/Image.ts';
export { PullPolicy } from './image/pullPolicy.ts';
export type { RegistryAuthConfig, RegistryAuthInput } from './image/auth.ts';
export { registerSecret } from './image/secrets.ts';
export { ImageBuilder } from './sdk/ImageBuilder.ts';
export { Snapshot, type ClusterSnapshot, type SnapshotMeta } from './sdk/Snapshot.ts';
export { Volume, type VolumeInfo } from './sdk/Volume.ts';
export { NetworkPolicy, NetworkBuilder, type NetworkPolicyConfig, type NetworkRule, type NetworkRuleInput } from './guestenv/NetworkPolicy.ts';
export { VolumeBuilder, type VolumeConfig } from './guestenv/volumes.ts';
export { PatchBuilder, type PatchConfig } from './guestenv/patches.ts';
export { CorralServer, type ServeOptions } from './server/CorralServer.ts';
export type { EventsOptions } from './supervisor/supervisorEvents.ts';
export type { SinceCursor } from './events/resumeStream.ts';
export type { ReplayLimits } from './events/ReplayLog.ts';
export type { LogEntry, LogsOptions, ExecLogLimits } from './logs/ExecLog.ts';
export type { SandboxMetrics } from './metrics/MetricsSampler.ts';
export { machineGraph, type MachineGraph, type GraphNode, type GraphEdge, type Point } from './inspector/machineGraph.ts';
