using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Rbs.Gateway.Tunnel;
using Rbs.V1;

namespace Rbs.Gateway.Registration;

/// <summary>
/// <c>rbs.v1.GatewayRegistry</c>, for the orchestrator: whether an agent has a live tunnel here, long-polling so a
/// tunnel-mode GetServer returns the moment the agent is reachable. Served with gRPC-Web on the agent endpoint
/// under the internal-token policy (<see cref="GatewayRegistryEndpoints"/>); reads <see cref="AgentTunnelRegistry"/>.
/// </summary>
internal sealed class GatewayRegistryService(AgentTunnelRegistry registry, TimeProvider timeProvider, IHostApplicationLifetime lifetime) : GatewayRegistry.GatewayRegistryBase
{
    /// <summary>The longest a GetAgent waits, whatever it asks for: the orchestrator asks again if it wants longer.</summary>
    public static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(120);

    public override async Task<AgentRegistration> GetAgent(GetAgentRequest request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(request.AgentId))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "agent_id is required"));
        }

        var wait = WaitOf(request.Wait);
        // The call's token ends the wait on cancellation and at its deadline (the caller then sees its own status).
        // A stopping gateway answers now: a long-poll must not hold its graceful stop (the orchestrator asks again).
        AgentTunnels? agent;
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, lifetime.ApplicationStopping);
        try
        {
            agent = wait > TimeSpan.Zero && !registry.Stopping
                ? await registry.WaitOnlineAsync(request.AgentId, wait, timeProvider, stopping.Token)
                : registry.FindOnline(request.AgentId);
        }
        catch (OperationCanceledException) when (!context.CancellationToken.IsCancellationRequested)
        {
            agent = registry.FindOnline(request.AgentId);
        }

        return agent is null ? new AgentRegistration { AgentId = request.AgentId } : ToMessage(agent.ToSnapshot());
    }

    public override Task<ListAgentsResponse> ListAgents(ListAgentsRequest request, ServerCallContext context) =>
        Task.FromResult(new ListAgentsResponse { Agents = { registry.Snapshot().Select(ToMessage) } });

    /// <summary>The wait asked for, within [0, <see cref="MaxWait"/>]; a malformed duration is the caller's error.</summary>
    internal static TimeSpan WaitOf(Duration? wait)
    {
        TimeSpan asked;
        try
        {
            asked = wait?.ToTimeSpan() ?? TimeSpan.Zero;
        }
        catch (InvalidOperationException)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"wait is not a normalized duration ({wait!.Seconds} s, {wait.Nanos} ns)"));
        }

        return asked <= TimeSpan.Zero ? TimeSpan.Zero : asked < MaxWait ? asked : MaxWait;
    }

    private static AgentRegistration ToMessage(AgentTunnelSnapshot agent) => new()
    {
        AgentId = agent.AgentId,
        UserId = agent.UserId,
        Online = agent.Online,
        LiveTunnels = agent.LiveTunnels,
        IdleTunnels = agent.IdleTunnels,
    };
}

/// <summary>Maps <see cref="GatewayRegistryService"/>: gRPC-Web (the agent endpoint is HTTP/1.1), internal token only.</summary>
internal static class GatewayRegistryEndpoints
{
    /// <summary>The service's path prefix; the gateway serves it on the agent endpoint only (GatewayHostingExtensions).</summary>
    public static readonly string RoutePrefix = "/" + GatewayRegistry.Descriptor.FullName + "/";

    public static IEndpointRouteBuilder MapGatewayRegistry(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGrpcService<GatewayRegistryService>()
            .EnableGrpcWeb()
            .RequireAuthorization(Security.GatewayAuthentication.Internal);
        return endpoints;
    }
}
