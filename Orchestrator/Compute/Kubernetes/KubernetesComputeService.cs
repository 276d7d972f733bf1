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

    /// <summary>The pause before watching or listing again after an API or transport error: a sick API server is not spun on.</summary>
    private static readonly TimeSpan s_apiRetryDelay = TimeSpan.FromSeconds(1);

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

        var created = await CallAsync(
            async () =>
            {
                try
                {
                    return await _client.CoreV1.CreateNamespacedPodAsync(pod, _namespace, cancellationToken: cancellationToken);
                }
                catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.Conflict)
                {
                    // Same agent id, so a retry of our own earlier attempt: carry on with that pod.
                    return await ReadExistingAsync(podName, cancellationToken);
                }
            },
            $"cannot create agent pod {podName} in namespace {_namespace}",
            $"creating agent pod {podName}");

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
        var deleted = await CallAsync(
            async () =>
            {
                try
                {
                    await _client.CoreV1.DeleteNamespacedPodAsync(
                        podName, _namespace, gracePeriodSeconds: GracePeriodSeconds, cancellationToken: cancellationToken);
                    return true;
                }
                catch (HttpOperationException e) when (e.Response.StatusCode == HttpStatusCode.NotFound)
                {
                    // Already gone: that is what was asked for.
                    return false;
                }
            },
            $"cannot delete agent pod {podName}",
            $"deleting agent pod {podName}");
        if (deleted)
        {
            Log.PodDeleted(logger, podName);
        }
    }

    public async Task<IReadOnlyList<DiscoveredAgent>> DiscoverAsync(CancellationToken cancellationToken)
    {
        var pods = await CallAsync(
            () => _client.CoreV1.ListNamespacedPodAsync(_namespace, labelSelector: AgentPod.Selector(_options), cancellationToken: cancellationToken),
            $"cannot list agent pods in namespace {_namespace}",
            "listing agent pods");

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
        var tracker = new PodStartTracker(created, _options, timeProvider.GetUtcNow());
        using var deadline = new CancellationTokenSource(_options.PodReadyTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, deadline.Token);
        var wait = new ReadyWait(created.Metadata.Name, tracker, deadline, linked.Token);
        try
        {
            return Observe(wait, created) ?? await WatchUntilReadyAsync(wait, created.Metadata.ResourceVersion);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw tracker.TimedOut();
        }
    }

    /// <summary>
    /// Watches from <paramref name="resourceVersion"/>; whenever a watch ends (server-side timeout, a dropped connection,
    /// or an ERROR event such as 410 Gone when the version is too old) re-lists the pod (a list's version is current even
    /// when the pod's own is older than the last compaction) and watches again from there. Returns the IP once ready.
    /// </summary>
    private async Task<string> WatchUntilReadyAsync(ReadyWait wait, string resourceVersion)
    {
        var consecutiveErrors = 0;
        while (true)
        {
            var watched = await WatchOnceAsync(wait, resourceVersion);
            if (watched.ReadyIp is { } ip)
            {
                return ip;
            }

            resourceVersion = watched.ResourceVersion;
            consecutiveErrors = watched.Error is null ? 0 : consecutiveErrors + 1;
            if (watched.Error is { } error)
            {
                Log.WatchRestarted(logger, wait.PodName, error.GetBaseException().Message);
                if (error is not KubernetesException || consecutiveErrors > 1)
                {
                    // Transport or server error, or the same error again: do not spin on a sick API server.
                    await Task.Delay(s_apiRetryDelay, timeProvider, wait.Token);
                }
            }

            var listed = await RelistAsync(wait, resourceVersion);
            if (listed.ReadyIp is { } freshIp)
            {
                return freshIp;
            }

            resourceVersion = listed.ResourceVersion;
        }
    }

    /// <summary>One watch on the pod, observing each event until the watch ends or the pod is ready.</summary>
    private async Task<WatchStep> WatchOnceAsync(ReadyWait wait, string resourceVersion)
    {
        Exception? error = null;
        var events = _client.CoreV1.WatchListNamespacedPodAsync(
            _namespace,
            fieldSelector: "metadata.name=" + wait.PodName,
            resourceVersion: resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds: 300,
            onError: e => error = e,
            cancellationToken: wait.Token);
        try
        {
            await foreach (var (type, pod) in events.WithCancellation(wait.Token))
            {
                switch (type)
                {
                    case WatchEventType.Deleted:
                        throw new ComputeException(
                            $"agent pod {wait.PodName} was deleted while starting ({PodReadiness.Describe(pod)})", transient: true);
                    case WatchEventType.Bookmark:
                        resourceVersion = pod.Metadata?.ResourceVersion ?? resourceVersion;
                        continue;
                    case WatchEventType.Added or WatchEventType.Modified:
                        resourceVersion = pod.Metadata?.ResourceVersion ?? resourceVersion;
                        if (Observe(wait, pod) is { } ip)
                        {
                            return new WatchStep(ip, resourceVersion);
                        }

                        break;
                }
            }
        }
        catch (Exception e) when (IsRetryable(e, wait.Token))
        {
            ThrowIfDenied(e, $"cannot watch agent pod {wait.PodName}");
            error = e;
        }

        return new WatchStep(null, resourceVersion, error);
    }

    /// <summary>Reads the pod afresh by listing it; on an API hiccup backs off briefly and keeps <paramref name="resourceVersion"/>.</summary>
    private async Task<WatchStep> RelistAsync(ReadyWait wait, string resourceVersion)
    {
        try
        {
            var list = await _client.CoreV1.ListNamespacedPodAsync(
                _namespace, fieldSelector: "metadata.name=" + wait.PodName, cancellationToken: wait.Token);
            if (list.Items.Count == 0)
            {
                throw new ComputeException($"agent pod {wait.PodName} was deleted while starting", transient: true);
            }

            return new WatchStep(Observe(wait, list.Items[0]), list.Metadata?.ResourceVersion ?? list.Items[0].Metadata.ResourceVersion);
        }
        catch (Exception e) when (IsRetryable(e, wait.Token))
        {
            ThrowIfDenied(e, $"cannot list agent pod {wait.PodName}");
            // API hiccup: back off briefly, the deadline still bounds the whole wait.
            Log.ApiError(logger, "read " + wait.PodName, e.Message);
            await Task.Delay(s_apiRetryDelay, timeProvider, wait.Token);
            return new WatchStep(null, resourceVersion);
        }
    }

    /// <summary>
    /// Feeds one observation of the pod to the tracker: returns the IP when ready, throws when the start failed, and
    /// otherwise re-arms the deadline to the tracker's (so the wait wakes up when it passes even if no further event
    /// arrives), logs the progress and returns null.
    /// </summary>
    private string? Observe(ReadyWait wait, V1Pod pod)
    {
        var now = timeProvider.GetUtcNow();
        var step = wait.Tracker.Observe(pod, now);
        var readiness = step.Readiness;
        switch (readiness.Kind)
        {
            case PodReadinessKind.Ready:
                return readiness.Detail;
            case PodReadinessKind.Failed:
                throw new ComputeException(readiness.Detail, readiness.Transient);
        }

        // Re-armed before the progress is logged: whoever acts on the log line (an operator, a test moving the clock
        // on) acts on a wait whose deadline already counts from this observation.
        wait.Deadline.CancelAfter(NotNegative(step.WaitUntil - now));
        if (readiness.Kind == PodReadinessKind.Unschedulable)
        {
            Log.WaitingForCapacity(logger, wait.PodName, readiness.Detail, step.GiveUpAt ?? step.WaitUntil);
        }
        else
        {
            Log.PodProgress(logger, wait.PodName, readiness.Detail);
        }

        return null;
    }

    /// <summary>
    /// The ready wait's error rule, in one place: while the wait goes on, an API error answer or a transport failure is
    /// retried (watch or list again; the deadline bounds the whole wait) — except a denied call, see <see cref="ThrowIfDenied"/>.
    /// </summary>
    private static bool IsRetryable(Exception e, CancellationToken wait) =>
        e is HttpOperationException or HttpRequestException or IOException && !wait.IsCancellationRequested;

    /// <summary>A denied call (401/403) will not succeed by retrying: fail the start naming the RBAC fix.</summary>
    private void ThrowIfDenied(Exception e, string what)
    {
        if (e is HttpOperationException { Response.StatusCode: HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized } denied)
        {
            throw ApiFailure(what, denied);
        }
    }

    private Task<V1Pod> ReadExistingAsync(string podName, CancellationToken cancellationToken) =>
        CallAsync(
            () => _client.CoreV1.ReadNamespacedPodAsync(podName, _namespace, cancellationToken: cancellationToken),
            $"agent pod {podName} already exists but cannot be read",
            $"reading agent pod {podName}");

    /// <summary>
    /// One Kubernetes API call a client waits on, with its failures as the client should see them: an error answer
    /// becomes <see cref="ApiFailure"/> (<paramref name="what"/> failed), an unreachable API server a transient
    /// <see cref="ComputeException"/> (while <paramref name="doing"/>). Answers the call expects (a 404 on delete, a 409 on
    /// create) it handles itself.
    /// </summary>
    private async Task<T> CallAsync<T>(Func<Task<T>> call, string what, string doing)
    {
        try
        {
            return await call();
        }
        catch (HttpOperationException e)
        {
            throw ApiFailure(what, e);
        }
        catch (HttpRequestException e)
        {
            throw new ComputeException($"Kubernetes API unreachable while {doing}: {e.Message}", transient: true, e);
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

    private static TimeSpan NotNegative(TimeSpan value) => value > TimeSpan.Zero ? value : TimeSpan.Zero;

    /// <summary>One agent pod's ready wait: its tracker, the deadline the tracker sets, and the token that ends the wait (deadline or caller).</summary>
    private sealed record ReadyWait(string PodName, PodStartTracker Tracker, CancellationTokenSource Deadline, CancellationToken Token);

    /// <summary>Where a watch or list left the wait: the pod IP once ready, else the version to watch from next and the error that ended the watch (null: the server closed it).</summary>
    private readonly record struct WatchStep(string? ReadyIp, string ResourceVersion, Exception? Error = null);

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
