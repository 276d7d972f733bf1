using System.Diagnostics;
using Grpc.Core;
using Rbs.JBazel.Configuration;
using Rbs.Shared.Protocol;
using Rbs.V1;

namespace Rbs.JBazel.Remote;

/// <summary>The agent GetServer chose, and how to reach it.</summary>
/// <param name="Response">The orchestrator's answer.</param>
/// <param name="AgentAddress">Where to send ExecuteCommand (the agent, or the gateway in tunnel mode).</param>
/// <param name="Headers">Metadata for every agent call (tunnel route, session token).</param>
/// <param name="ElapsedMilliseconds">GetServer's duration as the client measured it.</param>
/// <param name="FromCache">True when GetServer was skipped: the answer came from <see cref="AllocationCache"/> and the agent confirmed it.</param>
internal sealed record Allocation(GetServerResponse Response, Uri AgentAddress, Metadata Headers, long ElapsedMilliseconds, bool FromCache = false)
{
    public string AgentId => Response.AgentId;

    /// <summary>True when calls go through the gateway (tunnel mode); <see cref="AgentAddress"/> is then the gateway's.</summary>
    public bool ThroughGateway => Response.ConnectMode == ConnectMode.Tunnel;

    /// <summary>The agent and the way to it, for messages: <c>agent X at ADDR</c> or <c>agent X through the gateway at ADDR</c>.</summary>
    public string Description =>
        ThroughGateway ? $"agent {Response.AgentId} through the gateway at {Response.Address}" : $"agent {Response.AgentId} at {Response.Address}";

    /// <summary>
    /// The command's page on the gateway's dashboard (docs/dashboard.md), when the calls go through a gateway; null in
    /// direct mode (no gateway in the path, and the gateway streams only tunnel-mode agents).
    /// </summary>
    public string? DashboardLink(string invocationId) =>
        ThroughGateway ? $"{Response.Address.TrimEnd('/')}/dashboard/invocations/{Uri.EscapeDataString(invocationId)}" : null;

    /// <summary>The status line the e2e scripts grep; keep the format exactly.</summary>
    public string StatusLine =>
        $"rbs: agent {Response.AgentId} ({Response.Backend} {Response.BackendRef}) {(Response.Warm ? "warm" : "cold")} in {ElapsedMilliseconds} ms" +
        (Trace is null ? string.Empty : $", trace {Trace.TraceId}");

    /// <summary>The run's trace context, sent on every call (<see cref="Headers"/> carries it too).</summary>
    public Diagnostics.TraceParent? Trace { get; init; }
}

/// <summary>
/// Calls the orchestrator's GetServer and turns its failures into actionable <see cref="RemoteFailure"/>s. GetServer
/// is idempotent (find or start the one agent of user and repository), so a call that an intermediary failed is
/// repeated: during a rolling restart of the gateway replicas, a load balancer answers 502/503/504 for a call that
/// reached a replica as it stopped, and the next call reaches another one.
/// </summary>
internal sealed class GetServerClient(ChannelPool channels, RbsSettings settings, Diagnostics.TraceParent? trace = null)
{
    /// <summary>Calls in all when an intermediary keeps failing them (<see cref="RemoteFailure.RetryDelay"/> between them).</summary>
    internal const int MaxAttempts = RemoteFailure.MaxRetriedCalls;

    /// <summary>How long the agent a cached answer names has to say who it is before GetServer is asked instead.</summary>
    private static readonly TimeSpan s_cachedCheckTimeout = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The agent for <paramref name="request"/>: the cached answer when its agent still answers as that agent (one
    /// GetStatus on the connection the command uses next, instead of a GetServer round trip to the orchestrator),
    /// else GetServer's, which is then cached.
    /// </summary>
    public async Task<Allocation> AllocateAsync(GetServerRequest request, AllocationCache cache, CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        if (cache.TryLoad() is { } cached)
        {
            if (await ConfirmedAsync(cached, cancellationToken) is { } confirmed)
            {
                return confirmed with { ElapsedMilliseconds = stopwatch.ElapsedMilliseconds };
            }

            cache.Forget();
        }

        var allocation = await AllocateAsync(request, cancellationToken);
        cache.Save(allocation.Response);
        return allocation;
    }

    /// <summary>The cached answer as an allocation, if its agent answers GetStatus with its id through the same address and headers.</summary>
    private async Task<Allocation?> ConfirmedAsync(GetServerResponse cached, CancellationToken cancellationToken)
    {
        Allocation allocation;
        try
        {
            // A command on an agent that answers is a warm one, whatever the agent was when GetServer first named it.
            cached.Warm = true;
            allocation = new Allocation(cached, AgentAddress(cached), AgentHeaders(cached), 0, FromCache: true) { Trace = trace };
        }
        catch (RemoteFailure)
        {
            return null;
        }

        try
        {
            var agent = new V1.Agent.AgentClient(channels.ForAgent(allocation));
            var status = await agent.GetStatusAsync(new GetStatusRequest(), allocation.Headers, deadline: DateTime.UtcNow + s_cachedCheckTimeout, cancellationToken: cancellationToken);
            return status.AgentId == cached.AgentId ? allocation : null;
        }
        catch (RpcException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException(cancellationToken);
        }
        catch (RpcException)
        {
            // Gone, replaced (another agent on its port), its token refused, or the gateway does not know it: GetServer decides.
            return null;
        }
    }

    public async Task<Allocation> AllocateAsync(GetServerRequest request, CancellationToken cancellationToken)
    {
        var client = new V1.Orchestrator.OrchestratorClient(channels.Get(settings.Orchestrator));
        var headers = new Metadata();
        if (trace is not null)
        {
            headers.Add(Diagnostics.TraceParent.HeaderName, trace.Header);
        }

        if (settings.ApiKey is { Length: > 0 } apiKey)
        {
            headers.Add("authorization", $"Bearer {apiKey}");
        }

        var stopwatch = Stopwatch.StartNew();
        // One deadline for all attempts: --rbs_timeout bounds the whole allocation.
        var deadline = DateTime.UtcNow.Add(settings.Timeout);
        GetServerResponse response;
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                response = await client.GetServerAsync(request, headers, deadline: deadline, cancellationToken: cancellationToken);
                break;
            }
            catch (RpcException) when (cancellationToken.IsCancellationRequested)
            {
                throw new OperationCanceledException(cancellationToken);
            }
            catch (RpcException ex) when (attempt < MaxAttempts && RemoteFailure.IsIntermediaryFailure(ex) && DateTime.UtcNow + RemoteFailure.RetryDelay(attempt) < deadline)
            {
                await Task.Delay(RemoteFailure.RetryDelay(attempt), cancellationToken);
            }
            catch (RpcException ex)
            {
                throw Failure(ex);
            }
        }

        stopwatch.Stop();
        return new Allocation(response, AgentAddress(response), AgentHeaders(response), stopwatch.ElapsedMilliseconds) { Trace = trace };
    }

    private RemoteFailure Failure(RpcException ex)
    {
        var at = settings.Orchestrator.OriginalString;
        return ex.StatusCode switch
        {
            // Something answered (the orchestrator, or a gateway in front of it) but could not provide a reachable agent
            // now, e.g. a tunnel-mode agent did not register, or the gateway cannot reach its orchestrator: the detail,
            // written by whoever answered, says which.
            StatusCode.Unavailable when ex.Status.DebugException is null && !string.IsNullOrWhiteSpace(ex.Status.Detail) =>
                new RemoteFailure(ExitCodes.TransientRemoteError,
                    $"{at} could not provide an agent (Unavailable): {ex.Status.Detail.TrimEnd('.')}. Run the command again."),
            StatusCode.Unavailable => new RemoteFailure(ExitCodes.TransientRemoteError, Unreachable(ex)),
            StatusCode.DeadlineExceeded => new RemoteFailure(ExitCodes.TransientRemoteError,
                $"GetServer at {at} did not answer within {OptionValues.FormatDuration(settings.Timeout)} " +
                "(deadline exceeded). Run the command again; raise --rbs_timeout / RBS_TIMEOUT if agents start slowly."),
            StatusCode.Unauthenticated or StatusCode.PermissionDenied => new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"the orchestrator at {at} refused the request ({ex.StatusCode}): {ex.Status.Detail} " +
                "Check --rbs_api_key / RBS_API_KEY."),
            // The orchestrator reserves ResourceExhausted for its agent limits; its detail names the limit and the way out.
            StatusCode.ResourceExhausted when ex.Status.DebugException is null => new RemoteFailure(ExitCodes.AgentLimitReached,
                $"the orchestrator at {at} refused to start another agent: {ex.Status.Detail}"),
            StatusCode.Unimplemented => new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"{at} does not serve rbs.v1.Orchestrator/GetServer ({ex.Status.Detail}); it is set by {settings.OrchestratorSource}. " +
                "Point --rbs_orchestrator / RBS_ORCHESTRATOR at an RBS orchestrator or gateway."),
            _ => new RemoteFailure(ExitCodes.ForRemoteStatus(ex),
                $"the orchestrator at {at} failed GetServer ({ex.StatusCode}): {RemoteFailure.Describe(ex)}"),
        };
    }

    /// <summary>
    /// Nothing usable answered at the configured address. jbazel cannot know whether an orchestrator or a gateway
    /// should be there, so the message names the address, where it was set, and the checks that fit a loopback or a
    /// remote address.
    /// </summary>
    private string Unreachable(RpcException ex) =>
        UnreachableMessage(settings.Orchestrator, settings.OrchestratorSource, RemoteFailure.Describe(ex));

    internal static string UnreachableMessage(Uri address, string source, string reason)
    {
        var what = $"cannot reach {address.OriginalString} ({reason}), the RBS orchestrator or gateway address set by {source}.";
        return IsLoopback(address)
            ? $"{what} Nothing answers there on this machine: start the server meant to listen at port {address.Port} " +
                "(the local stack: 'rbs-orchestrator --local-mode'; or your gateway), or correct --rbs_orchestrator / RBS_ORCHESTRATOR."
            : $"{what} Check that {address.Host} is reachable from this machine (network, VPN, firewall) and that its server is up " +
                "(if it is a gateway, its operator can tell), or correct --rbs_orchestrator / RBS_ORCHESTRATOR.";
    }

    private static bool IsLoopback(Uri address) =>
        address.IsLoopback
        || (System.Net.IPAddress.TryParse(address.Host.Trim('[', ']'), out var ip) && System.Net.IPAddress.IsLoopback(ip));

    private Uri AgentAddress(GetServerResponse response)
    {
        var text = response.Address;
        if (!text.Contains("://", StringComparison.Ordinal) && text.Length > 0)
        {
            // Tolerate a bare host:port (the seed's "localhost:PORT"): agents speak h2c unless told otherwise.
            text = "http://" + text;
        }

        if (!Uri.TryCreate(text, UriKind.Absolute, out var address)
            || (address.Scheme != Uri.UriSchemeHttp && address.Scheme != Uri.UriSchemeHttps))
        {
            throw new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"the orchestrator at {settings.Orchestrator.OriginalString} returned an unusable agent address '{response.Address}' for agent {response.AgentId}.");
        }

        return address;
    }

    private Metadata AgentHeaders(GetServerResponse response)
    {
        var headers = new Metadata();
        if (trace is not null)
        {
            headers.Add(Diagnostics.TraceParent.HeaderName, trace.Header);
        }

        if (response.ConnectMode == ConnectMode.Tunnel)
        {
            if (string.IsNullOrEmpty(response.Route))
            {
                throw new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                    $"the orchestrator at {settings.Orchestrator.OriginalString} chose tunnel mode for agent {response.AgentId} but sent no route.");
            }

            headers.Add(RbsHeaders.AgentRoute, response.Route);
        }

        // The session token authorizes the stream at the gateway (tunnel) and, where configured, at the agent.
        if (!string.IsNullOrEmpty(response.SessionToken))
        {
            headers.Add("authorization", $"Bearer {response.SessionToken}");
        }

        return headers;
    }
}
