using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Rbs.Bench;

/// <summary>
/// Times shell commands side by side, interleaved (A B C A B C ...) rather than one after the other, so a change in
/// the machine's state during the run (another process, a CPU frequency step, page cache) hits every command alike.
/// Reports the median and the spread of each command's wall time.
/// </summary>
internal static class InterleaveBench
{
    public const string Usage =
        "       rbs-bench interleave <runs> <warmups> <json-out> <name>=<shell command> [<name>:prepare=<shell command>] ...";

    private const string PrepareSuffix = ":prepare";

    public static int Run(IReadOnlyList<string> args)
    {
        if (args.Count < 4
            || !int.TryParse(args[0], NumberStyles.None, CultureInfo.InvariantCulture, out var runs) || runs < 1
            || !int.TryParse(args[1], NumberStyles.None, CultureInfo.InvariantCulture, out var warmups))
        {
            Console.Error.WriteLine("usage:\n" + Usage);
            return 2;
        }

        var jsonPath = args[2];
        var commands = new List<(string Name, string Command)>();
        // Untimed commands run right before each timed run of their command (e.g. empty the destination).
        var prepares = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var spec in args.Skip(3))
        {
            var equals = spec.IndexOf('=', StringComparison.Ordinal);
            if (equals <= 0)
            {
                Console.Error.WriteLine($"rbs-bench interleave: '{spec}' is not <name>=<shell command>");
                return 2;
            }

            var name = spec[..equals];
            if (name.EndsWith(PrepareSuffix, StringComparison.Ordinal))
            {
                prepares[name[..^PrepareSuffix.Length]] = spec[(equals + 1)..];
            }
            else
            {
                commands.Add((name, spec[(equals + 1)..]));
            }
        }

        if (prepares.Keys.FirstOrDefault(name => commands.All(c => c.Name != name)) is { } orphan)
        {
            Console.Error.WriteLine($"rbs-bench interleave: '{orphan}{PrepareSuffix}' names no command");
            return 2;
        }

        for (var w = 0; w < warmups; w++)
        {
            foreach (var (name, command) in commands)
            {
                if (!Prepare(prepares, name) || RunOnce(command).ExitCode != 0)
                {
                    Console.Error.WriteLine($"rbs-bench interleave: warm-up of '{name}' failed; its command: {command}");
                    return 1;
                }
            }
        }

        var samples = commands.Select(_ => new List<double>()).ToList();
        for (var r = 0; r < runs; r++)
        {
            for (var c = 0; c < commands.Count; c++)
            {
                if (!Prepare(prepares, commands[c].Name))
                {
                    Console.Error.WriteLine($"rbs-bench interleave: the prepare command of '{commands[c].Name}' failed: {prepares[commands[c].Name]}");
                    return 1;
                }

                var result = RunOnce(commands[c].Command);
                if (result.ExitCode != 0)
                {
                    Console.Error.WriteLine($"rbs-bench interleave: run {r + 1} of '{commands[c].Name}' exited {result.ExitCode}; its command: {commands[c].Command}");
                    return 1;
                }

                samples[c].Add(result.Seconds);
            }

            Console.Error.Write($"\r  run {r + 1}/{runs}");
        }

        Console.Error.WriteLine();
        var json = new StringBuilder("{\"results\":[");
        for (var c = 0; c < commands.Count; c++)
        {
            var s = samples[c].Order().ToList();
            var line = string.Create(CultureInfo.InvariantCulture,
                $"{commands[c].Name} median {Quantile(s, 0.5):F4} p25 {Quantile(s, 0.25):F4} p75 {Quantile(s, 0.75):F4} min {s[0]:F4} max {s[^1]:F4} runs {s.Count}");
            Console.WriteLine(line);
            Console.Error.WriteLine("  " + line);
            json.Append(c == 0 ? "" : ",").Append(string.Create(CultureInfo.InvariantCulture,
                $"{{\"name\":\"{commands[c].Name}\",\"median\":{Quantile(s, 0.5):R},\"p25\":{Quantile(s, 0.25):R},\"p75\":{Quantile(s, 0.75):R},\"times\":[{string.Join(',', samples[c].Select(t => t.ToString("R", CultureInfo.InvariantCulture)))}]}}"));
        }

        File.WriteAllText(jsonPath, json.Append("]}\n").ToString());
        return 0;
    }

    private static bool Prepare(Dictionary<string, string> prepares, string name) =>
        !prepares.TryGetValue(name, out var prepare) || RunOnce(prepare).ExitCode == 0;

    private static (int ExitCode, double Seconds) RunOnce(string command)
    {
        var startInfo = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        startInfo.ArgumentList.Add("-c");
        // Every command gets the same standard streams (none of them a terminal); its own redirections still apply.
        startInfo.ArgumentList.Add("exec </dev/null >/dev/null 2>&1; " + command);
        var stopwatch = Stopwatch.StartNew();
        using var process = Process.Start(startInfo) ?? throw new InvalidOperationException("could not start /bin/sh");
        process.WaitForExit();
        return (process.ExitCode, stopwatch.Elapsed.TotalSeconds);
    }

    /// <summary>Linear interpolation between the closest ranks (the usual "type 7" quantile).</summary>
    private static double Quantile(List<double> sorted, double q)
    {
        var position = (sorted.Count - 1) * q;
        var low = (int)Math.Floor(position);
        var high = (int)Math.Ceiling(position);
        return sorted[low] + ((sorted[high] - sorted[low]) * (position - low));
    }
}
