using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>
/// A FAKE Kubernetes API server: real Kestrel on 127.0.0.1, speaking the core/v1 pods subset of the real
/// HTTP/JSON protocol (create, get, delete, list, and <c>?watch=true</c> streams of newline-delimited watch events
/// over a chunked response that stays open), with resource versions, label/field selectors, and 404/409 Status
/// objects. There is no scheduler or kubelet: tests move pods through their states with <see cref="UpdatePod"/>.
/// It exists because no Kubernetes can run on this machine; the K3s test covers the real thing where Docker is.
/// </summary>
public sealed class FakeKubernetesApiServer : IAsyncDisposable
{
    private readonly Lock _gate = new();
    private readonly Dictionary<(string Ns, string Name), V1Pod> _pods = [];
    private readonly List<PodEvent> _history = [];
    private readonly List<Watch> _watches = [];
    private readonly List<string> _requests = [];
    private readonly List<(string Name, int? GracePeriodSeconds)> _deletions = [];
    private readonly List<V1Pod> _created = [];
    private readonly Action<string> _log;
    private long _resourceVersion = 1000;
    private long _oldestWatchableVersion;
    private WebApplication? _app;

    public FakeKubernetesApiServer(Action<string> log)
    {
        _log = log;
    }

    /// <summary>Base address for <c>KubernetesClientConfiguration.Host</c>, e.g. http://127.0.0.1:41234.</summary>
    public string Address { get; private set; } = "";

    /// <summary>When set, pod creation answers this status code with a Status body (e.g. 403 for missing RBAC).</summary>
    public HttpStatusCode? FailCreatesWith { get; set; }

    /// <summary>When set, history is compacted right after each create, so watching from the create's version gets 410 Gone.</summary>
    public bool CompactAfterEachCreate { get; set; }

    public static async Task<FakeKubernetesApiServer> StartAsync(Action<string> log)
    {
        var server = new FakeKubernetesApiServer(log);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel().UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        app.Use(async (context, next) =>
        {
            server.Record($"{context.Request.Method} {context.Request.Path}{context.Request.QueryString}");
            try
            {
                await next(context);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                server._log("fake k8s: handler failed: " + e);
                throw;
            }
        });
        app.MapPost("/api/v1/namespaces/{ns}/pods", server.CreateAsync);
        app.MapGet("/api/v1/namespaces/{ns}/pods", server.ListOrWatchAsync);
        app.MapGet("/api/v1/namespaces/{ns}/pods/{name}", server.GetAsync);
        app.MapDelete("/api/v1/namespaces/{ns}/pods/{name}", server.DeleteAsync);
        app.MapFallback(context => WriteStatusAsync(context, HttpStatusCode.NotFound, "NotFound", "the fake API server serves only core/v1 pods"));
        await app.StartAsync();
        server._app = app;
        server.Address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        log($"fake Kubernetes API server listening on {server.Address}");
        return server;
    }

    /// <summary>Every request line seen, in order ("GET /api/v1/namespaces/x/pods?watch=true&amp;...").</summary>
    public IReadOnlyList<string> Requests
    {
        get
        {
            lock (_gate)
            {
                return [.. _requests];
            }
        }
    }

    /// <summary>Pod bodies exactly as clients POSTed them (before the server filled in status and metadata).</summary>
    public IReadOnlyList<V1Pod> CreatedPods
    {
        get
        {
            lock (_gate)
            {
                return [.. _created];
            }
        }
    }

    public IReadOnlyList<(string Name, int? GracePeriodSeconds)> Deletions
    {
        get
        {
            lock (_gate)
            {
                return [.. _deletions];
            }
        }
    }

    public int OpenWatchCount
    {
        get
        {
            lock (_gate)
            {
                return _watches.Count;
            }
        }
    }

    public V1Pod? GetPod(string ns, string name)
    {
        lock (_gate)
        {
            return _pods.TryGetValue((ns, name), out var pod) ? Clone(pod) : null;
        }
    }

    /// <summary>Waits until a pod with that name exists (the client created it).</summary>
    public Task<V1Pod> WaitForPodAsync(string ns, string name) =>
        WaitUntilAsync(() => GetPod(ns, name), $"pod {ns}/{name} to be created");

    /// <summary>Waits until a client holds a watch open whose selectors match the named pod.</summary>
    public Task WaitForWatchAsync(string ns, string name) =>
        WaitUntilAsync(
            () =>
            {
                lock (_gate)
                {
                    return _watches.Any(w => w.Namespace == ns && w.FieldSelector.Contains($"metadata.name={name}", StringComparison.Ordinal))
                        ? (object)true
                        : null;
                }
            },
            $"a watch on pod {ns}/{name}");

    public Task WaitUntilNoWatchesAsync() =>
        WaitUntilAsync(() => OpenWatchCount == 0 ? (object)true : null, "all watches to close");

    /// <summary>Inserts a pod directly, as if another orchestrator or a human had created it.</summary>
    public V1Pod AddPod(string ns, V1Pod pod)
    {
        lock (_gate)
        {
            var stored = Clone(pod);
            stored.Metadata.NamespaceProperty = ns;
            stored.Metadata.Uid ??= Guid.NewGuid().ToString();
            stored.Metadata.CreationTimestamp ??= DateTime.UtcNow;
            stored.Status ??= new V1PodStatus { Phase = "Pending" };
            Commit(ns, stored, "ADDED");
            return Clone(stored);
        }
    }

    /// <summary>Changes a pod the way the scheduler/kubelet would, bumping its resourceVersion and notifying watchers.</summary>
    public V1Pod UpdatePod(string ns, string name, Action<V1Pod> change)
    {
        lock (_gate)
        {
            if (!_pods.TryGetValue((ns, name), out var current))
            {
                throw new InvalidOperationException($"no pod {ns}/{name}");
            }

            var updated = Clone(current);
            change(updated);
            Commit(ns, updated, "MODIFIED");
            return Clone(updated);
        }
    }

    /// <summary>Deletes a pod out of band (a human with kubectl, node loss), notifying watchers.</summary>
    public void RemovePod(string ns, string name)
    {
        lock (_gate)
        {
            if (_pods.TryGetValue((ns, name), out var pod))
            {
                RemoveLocked(ns, pod);
            }
        }
    }

    /// <summary>Ends every open watch stream the way the API server does when a watch times out.</summary>
    public void CloseWatches()
    {
        lock (_gate)
        {
            foreach (var watch in _watches)
            {
                watch.Events.Writer.TryComplete();
            }
        }
    }

    /// <summary>Forgets history: watches from any older resourceVersion get "410 Gone", like after etcd compaction.</summary>
    public void CompactHistory()
    {
        lock (_gate)
        {
            _oldestWatchableVersion = _resourceVersion;
            _history.Clear();
        }
    }

    public async ValueTask DisposeAsync()
    {
        CloseWatches();
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }

    private async Task CreateAsync(HttpContext context, string ns)
    {
        using var reader = new StreamReader(context.Request.Body, Encoding.UTF8);
        var pod = KubernetesJson.Deserialize<V1Pod>(await reader.ReadToEndAsync(context.RequestAborted));
        if (FailCreatesWith is { } failure)
        {
            await WriteStatusAsync(context, failure, "Forbidden",
                $"pods is forbidden: User \"system:serviceaccount:{ns}:rbs-orchestrator\" cannot create resource \"pods\" in API group \"\" in the namespace \"{ns}\"");
            return;
        }

        V1Pod? stored = null;
        lock (_gate)
        {
            _created.Add(Clone(pod));
            if (!_pods.ContainsKey((ns, pod.Metadata.Name)))
            {
                stored = Clone(pod);
                stored.Metadata.NamespaceProperty = ns;
                stored.Metadata.Uid = Guid.NewGuid().ToString();
                stored.Metadata.CreationTimestamp = DateTime.UtcNow;
                stored.Status = new V1PodStatus { Phase = "Pending", QosClass = "Burstable" };
                Commit(ns, stored, "ADDED");
                stored = Clone(stored);
                if (CompactAfterEachCreate)
                {
                    // Other objects change (the global version moves on), then etcd compacts up to now.
                    _resourceVersion++;
                    _oldestWatchableVersion = _resourceVersion;
                    _history.Clear();
                }
            }
        }

        if (stored is null)
        {
            await WriteStatusAsync(context, HttpStatusCode.Conflict, "AlreadyExists", $"pods \"{pod.Metadata.Name}\" already exists");
            return;
        }

        await WriteJsonAsync(context, HttpStatusCode.Created, stored);
    }

    private async Task GetAsync(HttpContext context, string ns, string name)
    {
        var pod = GetPod(ns, name);
        if (pod is null)
        {
            await WriteStatusAsync(context, HttpStatusCode.NotFound, "NotFound", $"pods \"{name}\" not found");
            return;
        }

        await WriteJsonAsync(context, HttpStatusCode.OK, pod);
    }

    private async Task DeleteAsync(HttpContext context, string ns, string name)
    {
        int? grace = int.TryParse(context.Request.Query["gracePeriodSeconds"], CultureInfo.InvariantCulture, out var g) ? g : null;
        V1Pod? deleted = null;
        lock (_gate)
        {
            _deletions.Add((name, grace));
            if (_pods.TryGetValue((ns, name), out var pod))
            {
                // No kubelet to wait for: deletion is immediate (as with a grace period of 0).
                deleted = RemoveLocked(ns, pod);
            }
        }

        if (deleted is null)
        {
            await WriteStatusAsync(context, HttpStatusCode.NotFound, "NotFound", $"pods \"{name}\" not found");
            return;
        }

        await WriteJsonAsync(context, HttpStatusCode.OK, deleted);
    }

    private async Task ListOrWatchAsync(HttpContext context, string ns)
    {
        var query = context.Request.Query;
        var labelSelector = query["labelSelector"].ToString();
        var fieldSelector = query["fieldSelector"].ToString();
        if (!string.Equals(query["watch"], "true", StringComparison.OrdinalIgnoreCase))
        {
            V1PodList list;
            lock (_gate)
            {
                list = new V1PodList
                {
                    ApiVersion = "v1",
                    Kind = "PodList",
                    Metadata = new V1ListMeta { ResourceVersion = _resourceVersion.ToString(CultureInfo.InvariantCulture) },
                    Items = _pods.Where(p => p.Key.Ns == ns && Selectors.Match(p.Value, labelSelector, fieldSelector))
                        .Select(p => Clone(p.Value)).ToList(),
                };
            }

            await WriteJsonAsync(context, HttpStatusCode.OK, list);
            return;
        }

        await WatchAsync(context, ns, labelSelector, fieldSelector, query["resourceVersion"].ToString(), query["timeoutSeconds"].ToString());
    }

    private async Task WatchAsync(HttpContext context, string ns, string labelSelector, string fieldSelector, string resourceVersion, string timeoutSeconds)
    {
        var watch = new Watch(ns, labelSelector, fieldSelector);
        var initial = new List<PodEvent>();
        var gone = false;
        lock (_gate)
        {
            if (resourceVersion is "" or "0")
            {
                // "Start at most recent": synthetic ADDED events for what exists now.
                initial.AddRange(_pods.Where(p => p.Key.Ns == ns).Select(p => new PodEvent(ns, "ADDED", Clone(p.Value))));
            }
            else
            {
                var from = long.Parse(resourceVersion, CultureInfo.InvariantCulture);
                if (from < _oldestWatchableVersion)
                {
                    gone = true;
                }
                else
                {
                    initial.AddRange(_history.Where(e => e.Namespace == ns && e.Version > from));
                }
            }

            if (!gone)
            {
                _watches.Add(watch);
            }
        }

        context.Response.StatusCode = 200;
        context.Response.ContentType = "application/json";
        // Start the chunked response now, as the API server does, so the client's watch call returns.
        await context.Response.StartAsync(context.RequestAborted);
        try
        {
            if (gone)
            {
                var status = StatusJson(HttpStatusCode.Gone, "Expired", $"too old resource version: {resourceVersion} ({_oldestWatchableVersion})");
                await WriteLineAsync(context, $"{{\"type\":\"ERROR\",\"object\":{status}}}");
                return;
            }

            foreach (var e in initial)
            {
                if (Selectors.Match(e.Pod, labelSelector, fieldSelector))
                {
                    await WriteEventAsync(context, e);
                }
            }

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
            if (int.TryParse(timeoutSeconds, CultureInfo.InvariantCulture, out var seconds) && seconds > 0)
            {
                timeout.CancelAfter(TimeSpan.FromSeconds(seconds));
            }

            try
            {
                await foreach (var e in watch.Events.Reader.ReadAllAsync(timeout.Token))
                {
                    if (Selectors.Match(e.Pod, labelSelector, fieldSelector))
                    {
                        await WriteEventAsync(context, e);
                    }
                }
            }
            catch (OperationCanceledException)
            {
                // Client went away or the watch's timeoutSeconds passed: end the stream.
            }
        }
        finally
        {
            lock (_gate)
            {
                _watches.Remove(watch);
            }
        }
    }

    private static Task WriteEventAsync(HttpContext context, PodEvent e) =>
        WriteLineAsync(context, $"{{\"type\":\"{e.Type}\",\"object\":{KubernetesJson.Serialize(e.Pod)}}}");

    private static async Task WriteLineAsync(HttpContext context, string line)
    {
        await context.Response.Body.WriteAsync(Encoding.UTF8.GetBytes(line + "\n"), context.RequestAborted);
        await context.Response.Body.FlushAsync(context.RequestAborted);
    }

    private V1Pod RemoveLocked(string ns, V1Pod pod)
    {
        _pods.Remove((ns, pod.Metadata.Name));
        var gone = Clone(pod);
        gone.Metadata.ResourceVersion = (++_resourceVersion).ToString(CultureInfo.InvariantCulture);
        gone.Metadata.DeletionTimestamp ??= DateTime.UtcNow;
        Publish(new PodEvent(ns, "DELETED", gone) { Version = _resourceVersion });
        return Clone(gone);
    }

    private void Commit(string ns, V1Pod pod, string type)
    {
        pod.Metadata.ResourceVersion = (++_resourceVersion).ToString(CultureInfo.InvariantCulture);
        _pods[(ns, pod.Metadata.Name)] = pod;
        Publish(new PodEvent(ns, type, Clone(pod)) { Version = _resourceVersion });
    }

    private void Publish(PodEvent e)
    {
        _history.Add(e);
        foreach (var watch in _watches.Where(w => w.Namespace == e.Namespace))
        {
            watch.Events.Writer.TryWrite(e);
        }

        _log($"fake k8s: {e.Type} pod {e.Pod.Metadata.Name} rv={e.Version} phase={e.Pod.Status?.Phase}");
    }

    private void Record(string request)
    {
        lock (_gate)
        {
            _requests.Add(request);
        }

        _log("fake k8s: " + request);
    }

    private static async Task<T> WaitUntilAsync<T>(Func<T?> probe, string what)
        where T : class
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (DateTime.UtcNow < until)
        {
            if (probe() is { } value)
            {
                return value;
            }

            await Task.Delay(10);
        }

        throw new TimeoutException($"timed out waiting for {what}");
    }

    private static Task WriteJsonAsync<T>(HttpContext context, HttpStatusCode status, T body)
    {
        context.Response.StatusCode = (int)status;
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(KubernetesJson.Serialize(body), context.RequestAborted);
    }

    private static Task WriteStatusAsync(HttpContext context, HttpStatusCode status, string reason, string message)
    {
        context.Response.StatusCode = (int)status;
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(StatusJson(status, reason, message), context.RequestAborted);
    }

    /// <summary>A meta/v1 Status object (KubernetesJson can read these but not write them).</summary>
    private static string StatusJson(HttpStatusCode status, string reason, string message) =>
        JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["kind"] = "Status",
            ["apiVersion"] = "v1",
            ["metadata"] = new Dictionary<string, object>(),
            ["status"] = "Failure",
            ["message"] = message,
            ["reason"] = reason,
            ["code"] = (int)status,
        });

    private static V1Pod Clone(V1Pod pod) => KubernetesJson.Deserialize<V1Pod>(KubernetesJson.Serialize(pod));

    private sealed record PodEvent(string Namespace, string Type, V1Pod Pod)
    {
        public long Version { get; init; }
    }

    private sealed class Watch(string ns, string labelSelector, string fieldSelector)
    {
        public string Namespace { get; } = ns;

        public string LabelSelector { get; } = labelSelector;

        public string FieldSelector { get; } = fieldSelector;

        public Channel<PodEvent> Events { get; } = Channel.CreateUnbounded<PodEvent>();
    }

    /// <summary>The equality-based selector grammar the API server accepts: k=v, k==v, k!=v, k, !k (comma = and).</summary>
    private static class Selectors
    {
        public static bool Match(V1Pod pod, string labelSelector, string fieldSelector) =>
            MatchAll(labelSelector, key => pod.Metadata.Labels is { } l && l.TryGetValue(key, out var v) ? v : null) &&
            MatchAll(fieldSelector, field => field switch
            {
                "metadata.name" => pod.Metadata.Name,
                "metadata.namespace" => pod.Metadata.NamespaceProperty,
                "status.phase" => pod.Status?.Phase,
                "spec.nodeName" => pod.Spec?.NodeName ?? "",
                _ => throw new NotSupportedException($"field selector on {field}"),
            });

        private static bool MatchAll(string selector, Func<string, string?> lookup)
        {
            foreach (var raw in selector.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                bool ok;
                if (raw.Contains("!=", StringComparison.Ordinal))
                {
                    var parts = raw.Split("!=", 2);
                    ok = lookup(parts[0]) != parts[1];
                }
                else if (raw.Contains('=', StringComparison.Ordinal))
                {
                    var parts = raw.Split(raw.Contains("==", StringComparison.Ordinal) ? "==" : "=", 2);
                    ok = lookup(parts[0]) == parts[1];
                }
                else if (raw.StartsWith('!'))
                {
                    ok = lookup(raw[1..]) is null;
                }
                else
                {
                    ok = lookup(raw) is not null;
                }

                if (!ok)
                {
                    return false;
                }
            }

            return true;
        }
    }
}
