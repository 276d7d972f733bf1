using System.Diagnostics;
using System.Globalization;
using Grpc.Net.Client;
using Rbs.Bench;
using Rbs.V1;

// rbs-bench getserver <orchestrator-url> <source-path> <warm-calls> <cold-calls>
//   Prints "warm_p50_ms warm_p99_ms cold_p50_ms" on one line. Cold calls use fresh repo hashes (new agents).
// rbs-bench allocate <url1,url2,...> <source-path> <allocations> <concurrency>
//   Issues <allocations> GetServer calls for distinct fresh repo hashes (each one allocates an agent),
//   round-robin over the orchestrators, at most <concurrency> in flight. Prints
//   "allocations_per_second p50_ms p99_ms". The agents stay running: the caller cleans them up.
// rbs-bench streams <gateway-url> <agent-route> <session-token> <streams> <bytes> [concurrency]
//   Runs <streams> ExecuteCommand streams (args: "zeros" <bytes>; the agent's build tool must write exactly
//   <bytes> bytes to stdout, e.g. bench/tools/blast.sh) through the gateway, at most [concurrency] at a time
//   (default: all at once). Prints "ok errors seconds MiB/s" on one line, then one line per distinct error.
//   Exit code 0 only when every stream delivered exactly <bytes> bytes and exit code 0.
// rbs-bench getserver-tunnel <gateway-url> <source-path>
//   One GetServer through the gateway in tunnel mode; prints "<route> <session-token>".
// rbs-bench interleave <runs> <warmups> <json-out> <name>=<shell command> ...
//   Runs the commands interleaved (A B C A B C ...), each through /bin/sh with stdin/stdout/stderr on /dev/null,
//   and prints "<name> median <s> p25 <s> p75 <s> min <s> max <s> runs <n>" per command (all times in seconds).
const string Usage =
    "usage: rbs-bench getserver <orchestrator-url> <source-path> <warm-calls> <cold-calls>\n" +
    "       rbs-bench allocate <url1,url2,...> <source-path> <allocations> <concurrency>\n" +
    "       rbs-bench streams <gateway-url> <agent-route> <session-token> <streams> <bytes> [concurrency]\n" +
    "       rbs-bench getserver-tunnel <gateway-url> <source-path>\n" +
    InterleaveBench.Usage;
if (args.Length >= 1 && args[0] == "interleave")
{
    return InterleaveBench.Run(args[1..]);
}

if (args.Length >= 1 && args[0] == "streams" && args.Length is 6 or 7)
{
    return await StreamsBench.RunAsync(args[1], args[2], args[3],
        int.Parse(args[4], CultureInfo.InvariantCulture), long.Parse(args[5], CultureInfo.InvariantCulture),
        args.Length == 7 ? int.Parse(args[6], CultureInfo.InvariantCulture) : int.MaxValue);
}

if (args.Length == 3 && args[0] == "getserver-tunnel")
{
    return await StreamsBench.GetServerTunnelAsync(args[1], args[2]);
}

if (args.Length != 5 || args[0] is not ("getserver" or "allocate"))
{
    Console.Error.WriteLine(Usage);
    return 2;
}

return args[0] == "getserver"
    ? await GetServerAsync(args[1], args[2], Count(args[3]), Count(args[4]))
    : await AllocateAsync(args[1].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), args[2], Count(args[3]), Count(args[4]));

static int Count(string value) => int.Parse(value, NumberStyles.None, CultureInfo.InvariantCulture);

static async Task<double> TimeAsync(Orchestrator.OrchestratorClient client, string repoHash, string sourcePath)
{
    var sw = Stopwatch.StartNew();
    await client.GetServerAsync(
        new GetServerRequest { RepoHash = repoHash, SourcePath = sourcePath },
        deadline: DateTime.UtcNow.AddMinutes(2));
    return sw.Elapsed.TotalMilliseconds;
}

static async Task<int> GetServerAsync(string url, string sourcePath, int warmCalls, int coldCalls)
{
    using var channel = GrpcChannel.ForAddress(url);
    var client = new Orchestrator.OrchestratorClient(channel);
    var repo = "bench-" + Guid.NewGuid().ToString("N");

    await TimeAsync(client, repo, sourcePath); // allocate once; the rest is warm
    for (var i = 0; i < 20; i++)
    {
        await TimeAsync(client, repo, sourcePath); // JIT and connection warm-up
    }

    var warm = new List<double>();
    for (var i = 0; i < warmCalls; i++)
    {
        warm.Add(await TimeAsync(client, repo, sourcePath));
    }

    var cold = new List<double>();
    for (var i = 0; i < coldCalls; i++)
    {
        cold.Add(await TimeAsync(client, "bench-cold-" + Guid.NewGuid().ToString("N"), sourcePath));
    }

    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{Percentile(warm, 0.5):F2} {Percentile(warm, 0.99):F2} {Percentile(cold, 0.5):F1}"));
    return 0;
}

static async Task<int> AllocateAsync(string[] urls, string sourcePath, int allocations, int concurrency)
{
    if (urls.Length == 0 || allocations == 0 || concurrency == 0)
    {
        Console.Error.WriteLine(Usage);
        return 2;
    }

    var channels = urls.Select(url => GrpcChannel.ForAddress(url)).ToList();
    try
    {
        var clients = channels.Select(channel => new Orchestrator.OrchestratorClient(channel)).ToList();
        // Warm each orchestrator's JIT and connection with a warm call, so the timing is allocation work.
        var warmRepo = "bench-alloc-warm-" + Guid.NewGuid().ToString("N");
        await TimeAsync(clients[0], warmRepo, sourcePath);
        foreach (var client in clients)
        {
            await TimeAsync(client, warmRepo, sourcePath);
        }

        var latencies = new double[allocations];
        var run = "bench-alloc-" + Guid.NewGuid().ToString("N")[..8];
        var total = Stopwatch.StartNew();
        await Parallel.ForEachAsync(
            Enumerable.Range(0, allocations),
            new ParallelOptions { MaxDegreeOfParallelism = concurrency },
            async (i, _) => latencies[i] = await TimeAsync(clients[i % clients.Count], $"{run}-{i}", sourcePath));
        var seconds = total.Elapsed.TotalSeconds;

        var sorted = latencies.ToList();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{allocations / seconds:F1} {Percentile(sorted, 0.5):F0} {Percentile(sorted, 0.99):F0}"));
        return 0;
    }
    finally
    {
        foreach (var channel in channels)
        {
            channel.Dispose();
        }
    }
}

static double Percentile(List<double> values, double p)
{
    if (values.Count == 0)
    {
        return double.NaN;
    }

    var sorted = values.Order().ToList();
    return sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Count) - 1, 0, sorted.Count - 1)];
}
