using System.Diagnostics;
using System.Globalization;
using Grpc.Net.Client;
using Rbs.V1;

// rbs-bench getserver <orchestrator-url> <source-path> <warm-calls> <cold-calls>
// Prints "warm_p50_ms warm_p99_ms cold_p50_ms" on one line. Cold calls use fresh repo hashes (new agents).
if (args.Length != 5 || args[0] != "getserver")
{
    Console.Error.WriteLine("usage: rbs-bench getserver <orchestrator-url> <source-path> <warm-calls> <cold-calls>");
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
