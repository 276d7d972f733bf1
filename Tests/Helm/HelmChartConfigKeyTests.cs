using System.Collections;
using System.Reflection;
using System.Text.RegularExpressions;

namespace Rbs.Tests.Helm;

/// <summary>
/// Every configuration key the helm chart sets (env entries <c>name: Section__Key</c> in helm/rbs/templates) must
/// exist in the code: an options class with <c>public const string SectionName</c> in rbs-orchestrator, rbs-agent
/// or rbs-gateway with that property. A renamed option otherwise silently falls back to its default in production.
/// </summary>
public sealed partial class HelmChartConfigKeyTests(ITestOutputHelper output)
{
    private static readonly string[] s_assemblies = ["rbs-orchestrator", "rbs-agent", "rbs-gateway"];

    // Read by ASP.NET Core itself, not by an RBS options class.
    private static readonly string[] s_frameworkSections = ["Kestrel", "Logging", "AllowedHosts", "ASPNETCORE_", "DOTNET_"];

    [Fact]
    public void EveryKeyTheChartSetsExistsInTheCodesOptions()
    {
        var known = KnownKeys();
        var chartKeys = ChartKeys();
        foreach (var key in known)
        {
            output.WriteLine("known: " + string.Join(':', key));
        }

        Assert.True(chartKeys.Count >= 20, $"found only {chartKeys.Count} env keys in the chart; is the parser broken?");
        var unknown = chartKeys
            .Where(k => !s_frameworkSections.Any(f => k.Key.StartsWith(f, StringComparison.OrdinalIgnoreCase)))
            .Where(k => !known.Any(pattern => Matches(k.Key.Split(':'), pattern)))
            .Select(k => $"{k.Key} (env {k.Key.Replace(":", "__", StringComparison.Ordinal)} in {k.File})")
            .Distinct()
            .ToList();

        Assert.True(unknown.Count == 0,
            "The helm chart sets configuration keys no options class declares:\n  " + string.Join("\n  ", unknown));
    }

    [Fact]
    public void TheCheckRecognisesKubernetesKeysAndRejectsUnknownOnes()
    {
        var known = KnownKeys();

        Assert.Contains(known, k => Matches(["Orchestrator", "Kubernetes", "AgentImage"], k));
        Assert.Contains(known, k => Matches(["orchestrator", "kubernetes", "tolerations", "*", "key"], k));
        Assert.Contains(known, k => Matches(["Orchestrator", "Kubernetes", "NodeSelector", "*"], k));
        Assert.DoesNotContain(known, k => Matches(["Orchestrator", "Kubernetes", "AgentImag"], k));
        Assert.DoesNotContain(known, k => Matches(["Orchestrator", "Kubernetes", "Tolerations", "*", "Colour"], k));
    }

    /// <summary>Key patterns ("Section:Prop:*:Sub"), "*" standing for a list index or a dictionary key.</summary>
    private static List<string[]> KnownKeys()
    {
        var keys = new List<string[]>();
        foreach (var assembly in s_assemblies.Select(Assembly.Load))
        {
            foreach (var type in assembly.GetTypes())
            {
                var field = type.GetField("SectionName", BindingFlags.Public | BindingFlags.Static);
                if (field is { IsLiteral: true } && field.GetRawConstantValue() is string section)
                {
                    Collect(type, section.Split(':'), keys, depth: 0);
                }
            }
        }

        return keys;
    }

    private static void Collect(Type type, string[] prefix, List<string[]> keys, int depth)
    {
        if (depth > 6)
        {
            return;
        }

        foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (property.GetMethod is null || property.GetIndexParameters().Length > 0)
            {
                continue;
            }

            AddValue(property.PropertyType, [.. prefix, property.Name], keys, depth);
        }
    }

    private static void AddValue(Type type, string[] path, List<string[]> keys, int depth)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        if (IsScalar(type))
        {
            keys.Add(path);
            return;
        }

        var dictionary = type.GetInterfaces().Append(type)
            .FirstOrDefault(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IDictionary<,>));
        if (dictionary is not null)
        {
            AddValue(dictionary.GetGenericArguments()[1], [.. path, "*"], keys, depth + 1);
            return;
        }

        if (typeof(IEnumerable).IsAssignableFrom(type))
        {
            var element = type.IsArray
                ? type.GetElementType()!
                : type.GetInterfaces().Append(type)
                    .First(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IEnumerable<>)).GetGenericArguments()[0];
            AddValue(element, [.. path, "*"], keys, depth + 1);
            return;
        }

        Collect(type, path, keys, depth + 1);
    }

    private static bool IsScalar(Type type) =>
        type.IsPrimitive || type.IsEnum || type == typeof(string) || type == typeof(decimal) || type == typeof(TimeSpan) ||
        type == typeof(DateTimeOffset) || type == typeof(DateTime) || type == typeof(Uri) || type == typeof(Guid);

    private static bool Matches(string[] key, string[] pattern) =>
        key.Length == pattern.Length &&
        key.Zip(pattern).All(p => p.First == "*" || p.Second == "*" || string.Equals(p.First, p.Second, StringComparison.OrdinalIgnoreCase));

    /// <summary>Env entries of the chart's templates, as "Section:Key" with template expressions turned into "*".</summary>
    private static List<(string Key, string File)> ChartKeys()
    {
        var templates = Path.Combine(RepositoryRoot(), "helm", "rbs", "templates");
        var keys = new List<(string, string)>();
        foreach (var file in Directory.EnumerateFiles(templates))
        {
            foreach (Match match in EnvName().Matches(File.ReadAllText(file)))
            {
                var name = TemplateExpression().Replace(match.Groups[1].Value, "*");
                keys.Add((name.Replace("__", ":", StringComparison.Ordinal), Path.GetFileName(file)));
            }
        }

        return keys;
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (Directory.Exists(Path.Combine(dir.FullName, "helm", "rbs", "templates")))
            {
                return dir.FullName;
            }
        }

        throw new DirectoryNotFoundException("helm/rbs/templates not found above " + AppContext.BaseDirectory);
    }

    // "- name: Orchestrator__ApiKeys__{{ $i }}__User" (a key with at least one "__").
    [GeneratedRegex(@"^\s*-\s*name:\s*((?:[A-Za-z0-9_.\-]|\{\{[^}]*\}\})+__(?:[A-Za-z0-9_.\-/]|\{\{[^}]*\}\})+)\s*$", RegexOptions.Multiline)]
    private static partial Regex EnvName();

    [GeneratedRegex(@"\{\{[^}]*\}\}")]
    private static partial Regex TemplateExpression();
}
