using System.Net;
using System.Net.Sockets;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.State;

namespace Rbs.Orchestrator.Compute.Kubernetes;

/// <summary>
/// Runs each agent as a pod: creates it, watches it until Running and Ready, and reports its pod IP as the
/// direct address. Failures become <see cref="ComputeException"/>s the client sees; a pod that failed to start
/// is deleted, so nothing is left behind for the reaper.
/// </summary>
internal sealed partial class KubernetesComputeService(
    KubernetesConnection connection,
    IOptions<KubernetesComputeOptions> options,
    TimeProvider timeProvider,
    ILogger<KubernetesComputeService> logger) : IComputeService
{
    public const string BackendName = "kubernetes";

    private readonly KubernetesComputeOptions _options = options.Value;
    private readonly IKubernetes _client = connection.Client;
    private readonly string _namespace = connection.Namespace;

    public string Backend => BackendName;

    /// <summary>Test seam: last changes to the pod before it is created (e.g. a stand-in image without gRPC health).</summary>
    internal Action<V1Pod>? PodOverride { get; init; }

    public async Task<StartedAgent> StartAsync(AgentSpec spec, CancellationToken cancellationToken)
    {
        var pod = AgentPod.Build(spec, _options);
        PodOverride?.Invoke(pod);
        var podName = pod.Metadata.Name;
        Log.CreatingPod(logger, podName, _namespace, spec.AgentId, _options.AgentImage);

        V1Pod created;
        try
        {
            created = await _client.CoreV1.CreateNamespacedPodAsync(pod, _namespace, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
        {
            // Same agent id, so a retry of our own earlier attempt: carry on with that pod.
            created = await ReadExistingAsync(podName, cancellationToken);
        }
        catch (HttpOperationException e)
        {
            throw ApiFailure($"cannot create agent pod {podName} in namespace {_namespace}", e);
        }
        catch (HttpRequestException e)
        {
            throw new ComputeException($"Kubernetes API unreachable while creating agent pod {podName}: {e.Message}", transient: true, e);
        }

        try
        {
            var podIp = await WaitUntilReadyAsync(created, cancellationToken);
            var address = AgentPod.Address(podIp, _options.AgentPort);
            Log.PodReady(logger, podName, address);
            return new StartedAgent(podName, address);
        }
        catch (Exception e)
        {
            // Whatever went wrong (including the caller giving up), the pod must not outlive the failed start:
            // nobody records it, so nobody would ever delete it.
            Log.StartFailed(logger, podName, e.Message);
            await DeleteQuietlyAsync(podName);
            throw;
        }
    }

    public async Task<AgentHealth> ProbeAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        var podName = PodNameOf(record);
        try
        {
            var pod = await _client.CoreV1.ReadNamespacedPodAsync(podName, _namespace, cancellationToken: cancellationToken);
            if (pod.Metadata?.DeletionTimestamp is not null || pod.Status?.Phase is "Failed" or "Succeeded")
            {
                return AgentHealth.Dead;
            }

            return PodReadiness.Of(pod, _options.AgentImage).Kind == PodReadinessKind.Ready
                ? AgentHealth.Alive
                : AgentHealth.Unknown;
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            return AgentHealth.Dead;
        }
        catch (Exception e) when (e is HttpOperationException or HttpRequestException or IOException or SocketException)
        {
            Log.ApiError(logger, "probe " + podName, e.Message);
            return AgentHealth.Unknown;
        }
    }

    public async Task StopAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        var podName = PodNameOf(record);
        try
        {
            await _client.CoreV1.DeleteNamespacedPodAsync(
                podName, _namespace, gracePeriodSeconds: GracePeriodSeconds, cancellationToken: cancellationToken);
            Log.PodDeleted(logger, podName);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
            // Already gone: that is what was asked for.
        }
        catch (HttpOperationException e)
        {
            throw ApiFailure($"cannot delete agent pod {podName}", e);
        }
        catch (HttpRequestException e)
        {
            throw new ComputeException($"Kubernetes API unreachable while deleting agent pod {podName}: {e.Message}", transient: true, e);
        }
    }

    public async Task<IReadOnlyList<DiscoveredAgent>> DiscoverAsync(CancellationToken cancellationToken)
    {
        V1PodList pods;
        try
        {
            pods = await _client.CoreV1.ListNamespacedPodAsync(
                _namespace, labelSelector: AgentPod.Selector(_options), cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e)
        {
            throw ApiFailure($"cannot list agent pods in namespace {_namespace}", e);
        }
        catch (HttpRequestException e)
        {
            throw new ComputeException($"Kubernetes API unreachable while listing agent pods: {e.Message}", transient: true, e);
        }

        var found = new List<DiscoveredAgent>();
        foreach (var pod in pods.Items)
        {
            var identity = AgentPod.Identity(pod, _options);
            var readiness = PodReadiness.Of(pod, _options.AgentImage);
            if (identity is not { } id || readiness.Kind != PodReadinessKind.Ready)
            {
                continue;
            }

            found.Add(new DiscoveredAgent(
                id.AgentId, id.UserId, id.RepoHash, id.SourcePath, pod.Metadata.Name,
                AgentPod.Address(readiness.Detail, _options.AgentPort)));
        }

        return found;
    }

    private int GracePeriodSeconds => (int)Math.Ceiling(_options.DeleteGracePeriod.TotalSeconds);

    private static string PodNameOf(AgentRecord record) =>
        record.BackendRef.Length > 0 ? record.BackendRef : AgentPod.PodName(record.AgentId);

    /// <summary>
    /// Watches the pod (from the resource version it was created with, so no transition is missed) until it is
    /// ready, fails, is deleted, or the ready timeout passes. Returns the pod IP.
    /// </summary>
    private async Task<string> WaitUntilReadyAsync(V1Pod created, CancellationToken cancellationToken)
    {
        var podName = created.Metadata.Name;
        var started = timeProvider.GetUtcNow();
        var readyDeadline = started + _options.PodReadyTimeout;
        using var deadline = new CancellationTokenSource(_options.PodReadyTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, deadline.Token);

        var current = created;
        DateTimeOffset? unschedulableSince = null;
        var lastUnschedulable = "";

        // Returns the IP when ready; throws when failed; null to keep watching.
        string? Observe(V1Pod pod)
        {
            current = pod;
            var readiness = PodReadiness.Of(pod, _options.AgentImage);
            switch (readiness.Kind)
            {
                case PodReadinessKind.Ready:
                    return readiness.Detail;
                case PodReadinessKind.Failed:
                    throw new ComputeException(readiness.Detail, readiness.Transient);
                case PodReadinessKind.Unschedulable:
                    lastUnschedulable = readiness.Detail;
                    var now = timeProvider.GetUtcNow();
                    unschedulableSince ??= now;
                    var giveUpAt = unschedulableSince.Value + _options.UnschedulableGracePeriod;
                    if (giveUpAt <= now)
                    {
                        throw new ComputeException(readiness.Detail, transient: true);
                    }

                    // Wake up when the grace period ends even if no further event arrives.
                    deadline.CancelAfter(NotNegative(Earlier(giveUpAt, readyDeadline) - now));
                    Log.WaitingForCapacity(logger, podName, readiness.Detail, giveUpAt);
                    return null;
                default:
                    Log.PodProgress(logger, podName, readiness.Detail);
                    if (unschedulableSince is not null)
                    {
                        // Scheduled after all (a node came up): back to the full ready timeout.
                        unschedulableSince = null;
                        lastUnschedulable = "";
                        deadline.CancelAfter(NotNegative(readyDeadline - timeProvider.GetUtcNow()));
                    }

                    return null;
            }
        }

        try
        {
            if (Observe(created) is { } ip)
            {
                return ip;
            }

            // Watch from the version the create returned, so no transition between create and watch is missed.
            var resourceVersion = created.Metadata.ResourceVersion;
            var consecutiveErrors = 0;
            while (true)
            {
                Exception? watchError = null;
                var events = _client.CoreV1.WatchListNamespacedPodAsync(
                    _namespace,
                    fieldSelector: "metadata.name=" + podName,
                    resourceVersion: resourceVersion,
                    allowWatchBookmarks: true,
                    timeoutSeconds: 300,
                    onError: e => watchError = e,
                    cancellationToken: linked.Token);
                try
                {
                    await foreach (var (type, pod) in events.WithCancellation(linked.Token))
                    {
                        switch (type)
                        {
                            case WatchEventType.Deleted:
                                throw new ComputeException(
                                    $"agent pod {podName} was deleted while starting ({PodReadiness.Describe(pod)})", transient: true);
                            case WatchEventType.Bookmark:
                                resourceVersion = pod.Metadata?.ResourceVersion ?? resourceVersion;
                                continue;
                            case WatchEventType.Added or WatchEventType.Modified:
                                resourceVersion = pod.Metadata?.ResourceVersion ?? resourceVersion;
                                if (Observe(pod) is { } readyIp)
                                {
                                    return readyIp;
                                }

                                break;
                        }
                    }
                }
                catch (HttpOperationException e) when (!linked.IsCancellationRequested)
                {
                    if (e.Response.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized)
                    {
                        throw ApiFailure($"cannot watch agent pod {podName}", e);
                    }

                    watchError = e;
                }
                catch (Exception e) when (e is HttpRequestException or IOException && !linked.IsCancellationRequested)
                {
                    watchError = e;
                }

                // The watch ended: server-side timeout, a dropped connection, or an ERROR event (410 Gone when our
                // resource version is too old). Re-list (a list's version is current even when the pod's own is older
                // than the last compaction) and watch again from there.
                consecutiveErrors = watchError is null ? 0 : consecutiveErrors + 1;
                if (watchError is not null)
                {
                    Log.WatchRestarted(logger, podName, watchError.GetBaseException().Message);
                    if (watchError is not KubernetesException || consecutiveErrors > 1)
                    {
                        // Transport or server error, or the same error again: do not spin on a sick API server.
                        await Task.Delay(TimeSpan.FromSeconds(1), timeProvider, linked.Token);
                    }
                }

                try
                {
                    var list = await _client.CoreV1.ListNamespacedPodAsync(
                        _namespace, fieldSelector: "metadata.name=" + podName, cancellationToken: linked.Token);
                    if (list.Items.Count == 0)
                    {
                        throw new ComputeException($"agent pod {podName} was deleted while starting", transient: true);
                    }

                    if (Observe(list.Items[0]) is { } freshIp)
                    {
                        return freshIp;
                    }

                    resourceVersion = list.Metadata?.ResourceVersion ?? list.Items[0].Metadata.ResourceVersion;
                }
                catch (HttpOperationException e) when (e.Response.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized)
                {
                    throw ApiFailure($"cannot list agent pod {podName}", e);
                }
                catch (Exception e) when (e is HttpOperationException or HttpRequestException && !linked.IsCancellationRequested)
                {
                    // API hiccup: back off briefly, the deadline still bounds the whole wait.
                    Log.ApiError(logger, "read " + podName, e.Message);
                    await Task.Delay(TimeSpan.FromSeconds(1), timeProvider, linked.Token);
                }
            }
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            if (lastUnschedulable.Length > 0)
            {
                throw new ComputeException(lastUnschedulable, transient: true);
            }

            throw new ComputeException(
                $"agent pod {podName} not ready after {_options.PodReadyTimeout} ({PodReadiness.Describe(current)}); " +
                "raise Orchestrator:Kubernetes:PodReadyTimeout if image pulls are slow",
                transient: true);
        }
    }

    private async Task<V1Pod> ReadExistingAsync(string podName, CancellationToken cancellationToken)
    {
        try
        {
            return await _client.CoreV1.ReadNamespacedPodAsync(podName, _namespace, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException e)
        {
            throw ApiFailure($"agent pod {podName} already exists but cannot be read", e);
        }
        catch (HttpRequestException e)
        {
            throw new ComputeException($"Kubernetes API unreachable while reading agent pod {podName}: {e.Message}", transient: true, e);
        }
    }

    private async Task DeleteQuietlyAsync(string podName)
    {
        // Not the caller's token: a cancelled start must still clean up. Bounded so a dead API cannot hang us.
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10), timeProvider);
        try
        {
            await _client.CoreV1.DeleteNamespacedPodAsync(
                podName, _namespace, gracePeriodSeconds: GracePeriodSeconds, cancellationToken: timeout.Token);
            Log.PodDeleted(logger, podName);
        }
        catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
        {
        }
        catch (Exception e) when (e is HttpOperationException or HttpRequestException or IOException or OperationCanceledException)
        {
            Log.ApiError(logger, "delete " + podName, e.Message);
        }
    }

    private ComputeException ApiFailure(string what, HttpOperationException e)
    {
        var status = (int)e.Response.StatusCode;
        var detail = string.IsNullOrEmpty(e.Response.Content) ? e.Message : StatusMessage(e.Response.Content);
        return status switch
        {
            401 or 403 => new ComputeException(
                $"{what}: the orchestrator's Kubernetes identity is not allowed ({status}: {detail}); " +
                $"grant it create/get/list/watch/delete on pods in namespace {_namespace} (the helm chart's Role does)",
                transient: false, e),
            404 => new ComputeException($"{what}: not found ({detail}); does namespace {_namespace} exist?", transient: false, e),
            400 or 422 => new ComputeException($"{what}: rejected by the API server ({detail})", transient: false, e),
            _ => new ComputeException($"{what}: Kubernetes API error {status} ({detail})", transient: true, e),
        };
    }

    private static string StatusMessage(string content)
    {
        try
        {
            return KubernetesJson.Deserialize<V1Status>(content)?.Message ?? content;
        }
        catch (System.Text.Json.JsonException)
        {
            return content;
        }
    }

    private static DateTimeOffset Earlier(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;

    private static TimeSpan NotNegative(TimeSpan value) => value > TimeSpan.Zero ? value : TimeSpan.Zero;

    private static partial class Log
    {
        [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Creating agent pod {PodName} in namespace {Namespace} for agent {AgentId} (image {Image})")]
        public static partial void CreatingPod(ILogger logger, string podName, string @namespace, string agentId, string image);

        [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Agent pod {PodName} ready at {Address}")]
        public static partial void PodReady(ILogger logger, string podName, string address);

        [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "Agent pod {PodName} failed to start: {Reason}; deleting it")]
        public static partial void StartFailed(ILogger logger, string podName, string reason);

        [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "Deleted agent pod {PodName}")]
        public static partial void PodDeleted(ILogger logger, string podName);

        [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "Kubernetes API call failed ({Operation}): {Error}")]
        public static partial void ApiError(ILogger logger, string operation, string error);

        [LoggerMessage(EventId = 7, Level = LogLevel.Information, Message = "Agent pod {PodName} unschedulable ({Detail}); waiting for capacity until {GiveUpAt:O}")]
        public static partial void WaitingForCapacity(ILogger logger, string podName, string detail, DateTimeOffset giveUpAt);

        [LoggerMessage(EventId = 8, Level = LogLevel.Debug, Message = "Agent pod {PodName} starting: {Progress}")]
        public static partial void PodProgress(ILogger logger, string podName, string progress);

        [LoggerMessage(EventId = 6, Level = LogLevel.Debug, Message = "Watch on agent pod {PodName} ended ({Error}); re-reading and watching again")]
        public static partial void WatchRestarted(ILogger logger, string podName, string error);
    }
}
