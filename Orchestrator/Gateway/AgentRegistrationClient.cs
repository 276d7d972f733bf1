// GetServer waits with this until a tunnel-mode agent is registered at the gateway. Tokens: Shared/Tokens.
using System.Net;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Web;
using Rbs.Shared.Tokens;
using Rbs.V1;

namespace Rbs.Orchestrator.Gateway;

/// <summary>
/// Asks the gateway's <c>rbs.v1.GatewayRegistry</c> whether an agent has a live tunnel, long-polling so the answer
/// arrives as soon as the agent registers. gRPC-Web over HTTP/1.1: the service shares the gateway's agent endpoint with
/// the agents' tunnel WebSockets (Protos/rbs/v1/gateway_registry.proto says why). Authenticates with a short-lived
/// <see cref="RbsTokenKind.Internal"/> token. One channel for the client's lifetime.
/// </summary>
internal sealed class AgentRegistrationClient : IDisposable
{
    private static readonly TimeSpan s_maxPoll = TimeSpan.FromSeconds(60);

    /// <summary>
    /// How long past its wait a query may take before it counts as unanswered: the gateway answers at the end of the
    /// wait, so this only bounds a gateway that accepted the call and then hung.
    /// </summary>
    private static readonly TimeSpan s_answerSlack = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Queries in all when a load balancer in front of the gateway replicas answers for an upstream that failed (HTTP
    /// 502/503/504: a replica stopping during a rolling restart); the next query reaches another replica. The waits
    /// between them double from 50 ms.
    /// </summary>
    internal const int MaxAttempts = 4;

    private static readonly TimeSpan s_firstRetryDelay = TimeSpan.FromMilliseconds(50);

    private readonly Uri _gatewayAgentEndpoint;
    private readonly Func<string> _internalToken;
    private readonly GrpcChannel _channel;
    private readonly GatewayRegistry.GatewayRegistryClient _client;

    /// <param name="gatewayAgentEndpoint">The gateway's agent endpoint (cleartext HTTP/1.1).</param>
    /// <param name="internalToken">Mints a fresh internal token per query (the orchestrator's <c>RbsTokenService</c>).</param>
    /// <param name="transport">The connections under gRPC-Web; owned (disposed) by this client.</param>
    public AgentRegistrationClient(Uri gatewayAgentEndpoint, Func<string> internalToken, HttpMessageHandler transport)
    {
        _gatewayAgentEndpoint = gatewayAgentEndpoint;
        _internalToken = internalToken;
        _channel = GrpcChannel.ForAddress(gatewayAgentEndpoint, new GrpcChannelOptions
        {
            HttpHandler = new GrpcWebHandler(GrpcWebMode.GrpcWeb, transport),
            HttpVersion = HttpVersion.Version11,
            HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact,
            // The caller's cancellation stays an OperationCanceledException, not a gateway failure.
            ThrowOperationCanceledOnCancellation = true,
        });
        _client = new GatewayRegistry.GatewayRegistryClient(_channel);
    }

    /// <summary>True once <paramref name="agentId"/> is online at the gateway; false if not within <paramref name="timeout"/>.</summary>
    public async Task<bool> WaitUntilRegisteredAsync(string agentId, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = DateTimeOffset.UtcNow + timeout;
        while (true)
        {
            var remaining = deadline - DateTimeOffset.UtcNow;
            var wait = remaining <= TimeSpan.Zero ? TimeSpan.Zero : remaining < s_maxPoll ? remaining : s_maxPoll;
            if (await IsRegisteredAsync(agentId, wait, cancellationToken))
            {
                return true;
            }

            if (DateTimeOffset.UtcNow >= deadline)
            {
                return false;
            }
        }
    }

    /// <summary>
    /// One query; <paramref name="wait"/> &gt; 0 long-polls at the gateway for up to that long. A token the gateway
    /// refuses is an <see cref="InvalidOperationException"/> (a configuration error); a gateway that cannot be asked
    /// is an <see cref="RpcException"/>.
    /// </summary>
    public async Task<bool> IsRegisteredAsync(string agentId, TimeSpan wait, CancellationToken cancellationToken)
    {
        var request = new GetAgentRequest { AgentId = agentId, Wait = Duration.FromTimeSpan(wait < TimeSpan.Zero ? TimeSpan.Zero : wait) };
        var delay = s_firstRetryDelay;
        for (var attempt = 1; ; attempt++)
        {
            var headers = new Metadata { { "authorization", "Bearer " + _internalToken() } };
            try
            {
                var registration = await _client.GetAgentAsync(request, headers, DateTime.UtcNow + wait + s_answerSlack, cancellationToken);
                return registration.Online;
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unauthenticated or StatusCode.PermissionDenied)
            {
                throw new InvalidOperationException(
                    $"the gateway at {_gatewayAgentEndpoint} rejected the orchestrator's internal token: the two must share the same token key ({e.Status.Detail})", e);
            }
            catch (RpcException e) when (attempt < MaxAttempts && IsIntermediaryFailure(e))
            {
                await Task.Delay(delay, cancellationToken);
                delay *= 2;
            }
        }
    }

    /// <summary>HTTP 502, 503 or 504 without a gRPC status: a proxy's answer for an upstream that failed, not the gateway's.</summary>
    internal static bool IsIntermediaryFailure(RpcException e) =>
        e.StatusCode == StatusCode.Unavailable && e.Status.DebugException is null
        && e.Status.Detail is "Bad gRPC response. HTTP status code: 502" or "Bad gRPC response. HTTP status code: 503" or "Bad gRPC response. HTTP status code: 504";

    public void Dispose() => _channel.Dispose();
}
