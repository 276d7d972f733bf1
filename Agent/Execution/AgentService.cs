using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;
using Rbs.V1;

namespace Rbs.Agent.Execution;

/// <summary>The rbs.v1.Agent gRPC service.</summary>
internal sealed class AgentService(
    CommandRunner runner,
    CommandTracker tracker,
    IOptions<AgentOptions> options) : V1.Agent.AgentBase
{
    public override Task ExecuteCommand(
        IAsyncStreamReader<ClientFrame> requestStream,
        IServerStreamWriter<ServerFrame> responseStream,
        ServerCallContext context) => runner.RunAsync(requestStream, responseStream, context);

    public override Task<AgentStatus> GetStatus(GetStatusRequest request, ServerCallContext context) =>
        Task.FromResult(new AgentStatus
        {
            AgentId = options.Value.AgentId,
            Pid = Environment.ProcessId,
            RunningCommands = tracker.RunningCount,
            LastActivityUnixMillis = tracker.LastActivity.ToUnixTimeMilliseconds(),
            StartedUnixMillis = tracker.StartedAt.ToUnixTimeMilliseconds(),
            WorkspacePath = runner.WorkspaceRealPath,
        });
}
