using System.Diagnostics;
using System.Globalization;
using Grpc.Net.Client;
using Rbs.Bench;
using Rbs.V1;

// rbs-bench getserver <orchestrator-url> <source-path> <warm-calls> <cold-calls>
//   Prints "warm_p50_ms warm_p99_ms cold_p50_ms" on one line. Cold calls use fresh repo hashes (new agents).
// rbs-bench streams <gateway-url> <agent-route> <session-token> <streams> <bytes> [concurrency]
//   Runs <streams> ExecuteCommand streams (args: "zeros" <bytes>; the agent's build tool must write exactly
//   <bytes> bytes to stdout, e.g. bench/tools/blast.sh) through the gateway, at most [concurrency] at a time
//   (default: all at once). Prints "ok errors seconds MiB/s" on one line, then one line per distinct error.
//   Exit code 0 only when every stream delivered exactly <bytes> bytes and exit code 0.
// rbs-bench getserver-tunnel <gateway-url> <source-path>
//   One GetServer through the gateway in tunnel mode; prints "<route> <session-token>".
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

if (args.Length != 5 || args[0] != "getserver")
{
    Console.Error.WriteLine("usage: rbs-bench getserver <orchestrator-url> <source-path> <warm-calls> <cold-calls>");
    Console.Error.WriteLine("       rbs-bench streams <gateway-url> <agent-route> <session-token> <streams> <bytes> [concurrency]");
    Console.Error.WriteLine("       rbs-bench getserver-tunnel <gateway-url> <source-path>");
    return 2;
}

var warmCalls = int.Parse(args[3], CultureInfo.InvariantCulture);
var coldCalls = int.Parse(args[4], CultureInfo.InvariantCulture);
using var channel = GrpcChannel.ForAddress(args[1]);
var client = new Orchestrator.OrchestratorClient(channel);
var repo = "bench-" + Guid.NewGuid().ToString("N");

async Task<double> TimeAsync(string repoHash)
{
    var sw = Stopwatch.StartNew();
    await client.GetServerAsync(new GetServerRequest { RepoHash = repoHash, SourcePath = args[2] });
    return sw.Elapsed.TotalMilliseconds;
}

await TimeAsync(repo); // allocate once; the rest is warm
for (var i = 0; i < 20; i++)
{
    await TimeAsync(repo); // JIT and connection warm-up
}

var warm = new List<double>();
for (var i = 0; i < warmCalls; i++)
{
    warm.Add(await TimeAsync(repo));
}

var cold = new List<double>();
for (var i = 0; i < coldCalls; i++)
{
    cold.Add(await TimeAsync("bench-cold-" + Guid.NewGuid().ToString("N")));
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

Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
    $"{Percentile(warm, 0.5):F2} {Percentile(warm, 0.99):F2} {Percentile(cold, 0.5):F1}"));
return 0;
