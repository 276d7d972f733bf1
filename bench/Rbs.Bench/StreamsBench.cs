using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tunnel;
using Rbs.V1;

namespace Rbs.Bench;

/// <summary>
/// Many concurrent ExecuteCommand streams through one gateway (issue 3: 2,000 x 5 MB, zero errors). The connections
/// are relayed to the agent (Shared/Tunnel/RelayClient.cs), as jbazel's are, unless <c>RBS_BENCH_RELAY=0</c> asks for
/// the gateway's per-stream forwarding, so the two can be compared; a gateway that refuses the relay gets the
/// per-stream path either way. How many connections were relayed is written to stderr (stdout is the result line).
/// </summary>
internal static class StreamsBench
{
    /// <summary>The environment variable that turns the relay off (<c>0</c>, <c>false</c>, <c>no</c>).</summary>
    public const string RelayVariable = "RBS_BENCH_RELAY";

    public static async Task<int> RunAsync(string gateway, string route, string sessionToken, int streams, long bytes, int concurrency)
    {
        var relayed = 0;
        var notRelayed = 0;
        string? lastRefusal = null;
        var useRelay = Environment.GetEnvironmentVariable(RelayVariable) is not ("0" or "false" or "no");
        HttpMessageHandler handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        if (useRelay)
        {
            var relay = new RelayClient(new Uri(gateway), route, sessionToken)
            {
                Observer = outcome =>
                {
                    if (outcome.Relayed)
                    {
                        Interlocked.Increment(ref relayed);
                    }
                    else
                    {
                        Interlocked.Increment(ref notRelayed);
                        Volatile.Write(ref lastRefusal, outcome.Detail);
                    }
                },
            };
            // Each further HTTP/2 connection (> 100 streams) is a relay of its own; refused ones go to the plain handler.
            handler = new RelayHttpHandler(relay, new SocketsHttpHandler { EnableMultipleHttp2Connections = true },
                new HttpMessageInvoker(handler, disposeHandler: true));
        }

        using var channel = GrpcChannel.ForAddress(gateway, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 8 * 1024 * 1024,
            // > 100 concurrent streams need more than one HTTP/2 connection to the gateway.
            HttpHandler = handler,
            DisposeHttpClient = true,
        });
        var client = new Agent.AgentClient(channel);
        var metadata = new Metadata { { RbsHeaders.AgentRoute, route }, { "authorization", "Bearer " + sessionToken } };
        using var gate = new SemaphoreSlim(Math.Clamp(concurrency, 1, streams));
        var errors = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var ok = 0;
        var stopwatch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, streams).Select(async _ =>
        {
            await gate.WaitAsync();
            try
            {
                var (received, exit) = await RunOneAsync(client, metadata, bytes);
                if (received == bytes && exit == 0)
                {
                    Interlocked.Increment(ref ok);
                }
                else
                {
                    errors.AddOrUpdate($"wrong result: {received} bytes, exit {exit?.ToString(CultureInfo.InvariantCulture) ?? "none"}", 1, (_, n) => n + 1);
                }
            }
            catch (Exception ex)
            {
                var key = ex is RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : $"{ex.GetType().Name}: {ex.Message}";
                errors.AddOrUpdate(key, 1, (_, n) => n + 1);
            }
            finally
            {
                gate.Release();
            }
        }));
        var seconds = stopwatch.Elapsed.TotalSeconds;
        var failed = errors.Values.Sum();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{ok} {failed} {seconds:F2} {ok * (double)bytes / 1024 / 1024 / seconds:F0}"));
        foreach (var (error, count) in errors.OrderByDescending(e => e.Value))
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"error x{count}: {error}"));
        }

        Console.Error.WriteLine(useRelay
            ? string.Create(CultureInfo.InvariantCulture, $"rbs-bench: {relayed} connection(s) relayed, {notRelayed} not{(lastRefusal is null ? "" : $" (last: {lastRefusal})")}")
            : $"rbs-bench: relay off ({RelayVariable}=0): the gateway forwards each stream");

        return failed == 0 ? 0 : 1;
    }

    public static async Task<int> GetServerTunnelAsync(string gateway, string sourcePath)
    {
        using var channel = GrpcChannel.ForAddress(gateway);
        var client = new Orchestrator.OrchestratorClient(channel);
        var reply = await client.GetServerAsync(new GetServerRequest { RepoHash = "bench-streams", SourcePath = sourcePath, ConnectMode = ConnectMode.Tunnel });
        if (string.IsNullOrEmpty(reply.Route) || string.IsNullOrEmpty(reply.SessionToken))
        {
            Console.Error.WriteLine($"GetServer through {gateway} returned no tunnel route/session token (is the orchestrator in tunnel mode?)");
            return 1;
        }

        Console.WriteLine($"{reply.Route} {reply.SessionToken}");
        return 0;
    }

    private static async Task<(long Received, int? Exit)> RunOneAsync(Agent.AgentClient client, Metadata metadata, long bytes)
    {
        using var call = client.ExecuteCommand(metadata);
        var start = new StartCommand { InvocationId = Guid.NewGuid().ToString() };
        start.Args.Add("zeros");
        start.Args.Add(bytes.ToString(CultureInfo.InvariantCulture));
        await call.RequestStream.WriteAsync(new ClientFrame { Start = start });
        // No stdin: half-close now (stdin EOF), so the gateway's request-body copy ends cleanly.
        await call.RequestStream.CompleteAsync();
        long received = 0;
        int? exit = null;
        await foreach (var frame in call.ResponseStream.ReadAllAsync())
        {
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Stdout)
            {
                received += frame.Stdout.Length;
            }
            else if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = frame.Exit.Code;
            }
        }

        return (received, exit);
    }
}
